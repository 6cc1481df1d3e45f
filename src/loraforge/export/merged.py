"""Base model + adapter merged into one plain Hugging Face model directory (safetensors): what a user ships to
a server without LoRA support, or converts further (GGUF, ONNX)."""

import json
from pathlib import Path

import torch

from loraforge.errors import ConfigError, ModelNotFoundError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def adapter_of(path: Path) -> Path:
    """The adapter folder of a run directory (`RUN/adapter`), or `path` itself when it is one."""
    for candidate in (path / "adapter", path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise ModelNotFoundError(
        f"'{path}' is neither a run directory nor a PEFT adapter (no adapter_config.json)"
    )


def base_model_of(path: Path, adapter: Path) -> str:
    """The base model the run was trained on: the run's resolved config, else the adapter's own record."""
    import yaml

    config = path / "config.yaml"
    if config.is_file():
        base = (yaml.safe_load(config.read_text()) or {}).get("base_model")
        if base:
            return str(base)
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"'{path}' does not say which base model it was trained on: pass --base-model")
    return str(base)


def export_merged(
    path: Path, out: Path, *, base_model: str | None = None, dtype: str = "fp32", force: bool = False
) -> Path:
    """Merge the adapter of `path` (a run directory or an adapter folder) into its base model and save the
    result, with the tokenizer, to `out`. fp32 by default: merging in bf16 rounds the sum once more."""
    from loraforge.inference.hf import attach_adapter
    from loraforge.models import load_causal_lm, load_tokenizer, resolve_model

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, not '{dtype}'")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} is not empty (pass --force to overwrite)")
    adapter = adapter_of(path)
    resolved = resolve_model(base_model or base_model_of(path, adapter))
    model = attach_adapter(load_causal_lm(resolved, dtype=DTYPES[dtype]), adapter)
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    load_tokenizer(resolved).save_pretrained(out)
    return out
