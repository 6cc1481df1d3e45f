"""GGUF for llama.cpp: a trained adapter merged into its base (f32, bf16, f16, q8_0 or q4_k_m), the adapter
alone as a GGUF LoRA (`llama-cli --lora`), or the base model alone; written by llama.cpp's own converters
(llamacpp.py)."""

import tempfile
from pathlib import Path

from loraforge.errors import ConfigError
from loraforge.export.llamacpp import run_script, run_tool
from loraforge.export.merged import adapter_of, base_model_of, export_merged

CONVERTER_TYPES = ("f32", "bf16", "f16", "q8_0")  # written by the converter itself
QUANTIZE_TYPES = {"q4_k_m": "Q4_K_M"}  # converted to f32, then quantized with llama-quantize


def export_gguf(
    path: Path,
    out: Path,
    *,
    quant: str = "f32",
    lora_only: bool = False,
    base_model: str | None = None,
    force: bool = False,
) -> Path:
    """Write `out` from the run (or adapter folder) `path`; see the module docstring."""
    from loraforge.models import resolve_model

    allowed = CONVERTER_TYPES if lora_only else (*CONVERTER_TYPES, *QUANTIZE_TYPES)
    if quant not in allowed:
        raise ConfigError(
            f"--quant must be one of {', '.join(allowed)}{' with --lora-only' if lora_only else ''}"
        )
    if out.exists() and not force:
        raise ConfigError(f"--out {out} exists (pass --force to overwrite)")
    adapter = adapter_of(path)
    spec = base_model or base_model_of(path, adapter)
    out.parent.mkdir(parents=True, exist_ok=True)
    if lora_only:
        base = resolve_model(spec).path  # the converter reads only the base's config.json
        run_script("convert_lora_to_gguf.py", adapter, "--base", base, "--outfile", out, "--outtype", quant)
        return out
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        merged = export_merged(path, Path(tmp) / "merged", base_model=spec)
        convert_model(merged, out, quant)
    return out


def export_base_gguf(model: str, out: Path, *, quant: str = "f32", force: bool = False) -> Path:
    """The base model alone (an alias or HF directory, no adapter) as GGUF: what llama.cpp serves
    adapters on (benchmarks/vs_llamacpp.py)."""
    from loraforge.models import resolve_model

    if quant not in (*CONVERTER_TYPES, *QUANTIZE_TYPES):
        raise ConfigError(f"--quant must be one of {', '.join((*CONVERTER_TYPES, *QUANTIZE_TYPES))}")
    if out.exists() and not force:
        raise ConfigError(f"--out {out} exists (pass --force to overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    convert_model(resolve_model(model).path, out, quant)
    return out


def convert_model(hf_dir: Path, out: Path, quant: str) -> None:
    """An HF model directory (weights and tokenizer) as a GGUF of type `quant`; k-quants go through f32."""
    if quant not in QUANTIZE_TYPES:
        run_script("convert_hf_to_gguf.py", hf_dir, "--outfile", out, "--outtype", quant)
        return
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        full = Path(tmp) / "f32.gguf"
        run_script("convert_hf_to_gguf.py", hf_dir, "--outfile", full, "--outtype", "f32")
        run_tool("llama-quantize", full, out, QUANTIZE_TYPES[quant])
