"""The linear projections of the Llama family, described once.

The engine runs each decoder layer's seven linear layers as four: q, k and v fused into `qkv`, gate and up
into `gate_up` (each fused weight is its parts concatenated along the output, in the order given here). This
table is what `Llama.load` fuses, what an adapter's `lora_A`/`lora_B` of each module are checked against
(lora/adapter_file.py), and how the stacked LoRA weights are laid out (lora/weights.py). A model family with
other projections adds its own table here.
"""

from dataclasses import dataclass
from typing import NamedTuple


class Part(NamedTuple):
    """One HF (and PEFT) linear module inside a fused projection, and the size attribute of its output."""

    module: str  # e.g. "q_proj"
    out_dim: str  # a key of `model_dims`


@dataclass(frozen=True)
class Projection:
    name: str  # the engine's fused projection: "qkv", "o", "gate_up", "down"
    parent: str  # the HF submodule holding its parts: "self_attn" or "mlp"
    in_dim: str  # a key of `model_dims`
    parts: tuple[Part, ...]

    def hf_weight(self, layer: int, part: Part, kind: str = "weight") -> str:
        """The HF checkpoint key of one part, e.g. `model.layers.3.self_attn.q_proj.weight`."""
        return f"model.layers.{layer}.{self.parent}.{part.module}.{kind}"


PROJECTIONS: dict[str, Projection] = {
    p.name: p
    for p in (
        Projection(
            "qkv",
            "self_attn",
            "hidden_size",
            (Part("q_proj", "q_size"), Part("k_proj", "kv_size"), Part("v_proj", "kv_size")),
        ),
        Projection("o", "self_attn", "q_size", (Part("o_proj", "hidden_size"),)),
        Projection(
            "gate_up",
            "mlp",
            "hidden_size",
            (Part("gate_proj", "intermediate_size"), Part("up_proj", "intermediate_size")),
        ),
        Projection("down", "mlp", "intermediate_size", (Part("down_proj", "hidden_size"),)),
    )
}
# PEFT module name -> (its fused projection, the index of its part there)
MODULE_TO_PROJECTION: dict[str, tuple[str, int]] = {
    part.module: (p.name, j) for p in PROJECTIONS.values() for j, part in enumerate(p.parts)
}


def model_dims(cfg) -> dict[str, int]:
    """The sizes the table's `in_dim`/`out_dim` name, from a model config (`ModelConfig`)."""
    return {
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "q_size": cfg.num_heads * cfg.head_dim,
        "kv_size": cfg.num_kv_heads * cfg.head_dim,
    }


def module_shape(module: str, dims: dict[str, int]) -> tuple[int, int]:
    """(input size, output size) of one PEFT module, e.g. `q_proj`."""
    name, j = MODULE_TO_PROJECTION[module]
    proj = PROJECTIONS[name]
    return dims[proj.in_dim], dims[proj.parts[j].out_dim]
