"""Random PEFT LoRA adapters for the tiny test models, and transformers (+ PEFT) reference generations: shared
by the tests and benchmarks/cuda_check.py (which runs the same equality check on a GPU)."""

import json
from pathlib import Path

import torch

from loraforge.serve.model.projections import PROJECTIONS, module_shape

ALL_LINEAR = [part.module for proj in PROJECTIONS.values() for part in proj.parts]
# The engine-vs-HF equality workload (tests/serve/engine/test_equality.py, benchmarks/cuda_check.py).
EQUALITY_PROMPTS = [
    "The quick brown fox",
    "How do I activate my card?",
    "transfer money to my friend",
    "abc",
    'JSON {"label": "yes"}',
    "Question: what is two plus three?",
    "card_arrival exchange_rate",
    "Why was my transfer declined?",
]
EQUALITY_ADAPTERS = [None, "alpha", "beta", "gamma", "delta", "alpha", None, "gamma"]
EQUALITY_MAX_NEW = 12


def make_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    r: int = 8,
    alpha: int = 16,
    targets=None,
    seed: int = 0,
    std: float = 0.3,
) -> Path:
    """Save a PEFT LoRA adapter with random A and B (B is zero after init, which would make it a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or ALL_LINEAR, lora_dropout=0.0)
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    model.save_pretrained(out_dir)
    return out_dir


def hf_greedy(
    model_dir: Path, prompts: list[list[int]], adapters: list[Path | None], max_new_tokens: int
) -> list:
    """Reference: transformers (+ PEFT) greedy generation, one prompt at a time, fp32; stops at EOS."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    names = {a: f"a{i}" for i, a in enumerate(dict.fromkeys(a for a in adapters if a is not None))}
    model = base
    for path, name in names.items():
        if model is base:
            model = PeftModel.from_pretrained(base, path, adapter_name=name)
        else:
            model.load_adapter(path, adapter_name=name)
    model.eval()
    outs = []
    for ids, adapter in zip(prompts, adapters, strict=True):
        kwargs = {}
        if names:
            kwargs["adapter_names"] = [names[adapter] if adapter is not None else "__base__"]
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                **kwargs,
            )
        outs.append(out[0, len(ids) :].tolist())
    return outs


def make_adapter_registry(model_dir: Path, root: Path) -> Path:
    """Four adapters of different ranks and targets for `model_dir`, one folder each under `root`
    (alpha, beta, gamma, delta); benchmarks/cuda_check.py reuses it on the GPU."""
    make_adapter(model_dir, root / "alpha", r=8, seed=1)
    make_adapter(model_dir, root / "beta", r=4, alpha=8, seed=2)
    make_adapter(model_dir, root / "gamma", r=16, alpha=16, targets=["q_proj", "v_proj"], seed=3, std=0.5)
    delta_targets = ["gate_proj", "down_proj", "o_proj"]
    make_adapter(model_dir, root / "delta", r=2, alpha=4, targets=delta_targets, seed=4)
    return root


def write_random_adapter(
    model_dir: Path, out_dir: Path, *, r: int = 8, seed: int = 0, std: float = 0.3
) -> Path:
    """A PEFT-format LoRA adapter on all linear layers, written directly (faster than via a PeftModel)."""
    from safetensors.torch import save_file

    from loraforge.serve.model.config import ModelConfig

    dims = ModelConfig.from_hf(model_dir).dims
    cfg = json.loads((model_dir / "config.json").read_text())
    shapes = {
        f"{proj.parent}.{part.module}": module_shape(part.module, dims)
        for proj in PROJECTIONS.values()
        for part in proj.parts
    }
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for module, (din, dout) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, din, generator=gen) * std
            tensors[f"{key}.lora_B.weight"] = torch.randn(dout, r, generator=gen) * std
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ALL_LINEAR}
    (out_dir / "adapter_config.json").write_text(json.dumps(config))
    return out_dir
