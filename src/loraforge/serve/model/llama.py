"""The Llama family (Llama, Mistral, Qwen2, SmolLM) in plain PyTorch, with fused QKV and gate-up weights.

Reads top to bottom like gpt-fast's model.py: `Llama` -> `Block` (attention, then MLP) -> `Linear`. Each
per-token operation goes through `ops` (kernels/ops.py: the C++ CPU kernels or plain PyTorch, chosen once),
and each projection's LoRA through `LoRAStep.add` (a no-op for a batch without adapters). Loads HF
safetensors. Matches transformers' LlamaForCausalLM numerics (RMSNorm in fp32, RoPE in fp32,
rotate-half layout) so greedy outputs agree token for token in fp32.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from loraforge.errors import ModelNotFoundError
from loraforge.serve.kernels.ops import TorchOps, ops_for
from loraforge.serve.lora.weights import LoRAStep
from loraforge.serve.model.attention import AttentionMetadata, attention
from loraforge.serve.model.kv_cache import KVCache
from loraforge.serve.model.linear import Linear, frozen, keep_plain_copy
from loraforge.serve.model.projections import PROJECTIONS, model_dims

SUPPORTED = {"llama", "mistral", "qwen2"}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_hf(cls, path: Path) -> "ModelConfig":
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("model_type") not in SUPPORTED:
            raise ModelNotFoundError(
                f"model type '{cfg.get('model_type')}' is not supported by the engine ({sorted(SUPPORTED)})"
            )
        # transformers 5 writes `rope_parameters`; older configs have `rope_theta` + `rope_scaling`.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", cfg.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        eos = cfg.get("eos_token_id")
        heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=None if rope_type == "default" else rope,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            qkv_bias=cfg.get("attention_bias", cfg.get("model_type") == "qwen2"),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [eos] if eos is not None else []),
        )

    @property
    def dims(self) -> dict[str, int]:
        """The sizes the projection table names (model/projections.py)."""
        return model_dims(self)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies, with linear or Llama-3 scaling applied."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    s = cfg.rope_scaling
    if s is None:
        return inv
    kind = s.get("rope_type", s.get("type"))
    if kind == "linear":
        return inv / s["factor"]
    if kind == "llama3":
        factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= old / high) & (wavelen <= old / low)
        return torch.where(is_mid, mid, scaled)
    raise ModelNotFoundError(f"RoPE scaling '{kind}' is not supported (supported: linear, llama3)")


class Attention(torch.nn.Module):
    """Self-attention of one layer: fused QKV projection, RoPE, attention over the paged cache, output."""

    def __init__(self, cfg: ModelConfig, index: int, qkv: Linear, o: Linear, ops: TorchOps):
        super().__init__()
        self.cfg, self.index, self.ops = cfg, index, ops
        self.qkv, self.o = qkv, o
        self.q_size, self.kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        meta: AttentionMetadata,
        kv: KVCache,
        lora: LoRAStep,
    ) -> torch.Tensor:
        cfg, i = self.cfg, self.index
        qkv = self.qkv(x)
        lora.add(i, "qkv", x, qkv)
        q, k = self.ops.rope_qk(qkv, cos, sin, cfg.num_heads, cfg.num_kv_heads)
        v = qkv[:, self.q_size + self.kv_size :].view(-1, cfg.num_kv_heads, cfg.head_dim)
        a = attention(q, k, v, i, meta, kv, self.ops).reshape(-1, self.q_size)
        out = self.o(a)
        lora.add(i, "o", a, out)
        return out


class MLP(torch.nn.Module):
    """SwiGLU: fused gate-up projection, `silu(gate) * up`, down projection."""

    def __init__(self, index: int, gate_up: Linear, down: Linear, ops: TorchOps):
        super().__init__()
        self.index, self.ops = index, ops
        self.gate_up, self.down = gate_up, down

    def forward(self, x: torch.Tensor, lora: LoRAStep) -> torch.Tensor:
        gu = self.gate_up(x)
        lora.add(self.index, "gate_up", x, gu)
        m = self.ops.silu_mul(gu)
        out = self.down(m)
        lora.add(self.index, "down", m, out)
        return out


class Block(torch.nn.Module):
    """One decoder layer. The residual stream `h` is updated in place; each residual add is fused with the
    RMSNorm that follows it (`ops.add_rms_norm`), the last one with the next layer's first norm."""

    def __init__(self, cfg: ModelConfig, ln1, attn: Attention, ln2, mlp: MLP, ops: TorchOps):
        super().__init__()
        self.eps, self.ops = cfg.rms_norm_eps, ops
        self.ln1, self.attn, self.ln2, self.mlp = frozen(ln1), attn, frozen(ln2), mlp

    def forward(
        self,
        h: torch.Tensor,
        x: torch.Tensor,
        cos,
        sin,
        meta: AttentionMetadata,
        kv: KVCache,
        lora: LoRAStep,
        next_ln: torch.Tensor | None,
    ) -> torch.Tensor:
        """`x` is `ln1(h)`; returns the next layer's `ln1(h)` (h itself after the last layer)."""
        a = self.attn(x, cos, sin, meta, kv, lora)
        x = self.ops.add_rms_norm(h, a, self.ln2, self.eps)  # h += attention; x = ln2(h)
        m = self.mlp(x, lora)
        if next_ln is None:
            return h.add_(m)
        return self.ops.add_rms_norm(h, m, next_ln, self.eps)  # h += mlp; x = next layer's ln1(h)


class Llama(torch.nn.Module):
    """The model: embedding, decoder blocks, final norm and LM head. `forward` runs a flat batch of tokens
    from many sequences and returns the last hidden state of each sequence; `logits` applies the LM head.
    Weights are frozen parameters (`.parameters()`, `state_dict()`, `.to()` see them)."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.cfg = cfg
        self.embed = frozen(weights.pop("embed"))
        self.final_norm = frozen(weights.pop("norm"))
        self.ops = ops = ops_for(self.embed.device, self.embed.dtype)  # kernels or plain PyTorch, once
        # On CPU each linear weight is held plain (for the 1-2 row kernel) and packed (for oneDNN): twice
        # the memory. Where the linear weights take over a quarter of RAM only the packed form is kept.
        matrices = [w for name, w in weights.items() if name.split(".")[-1] in PROJECTIONS]
        matrices += [weights["lm_head"]] if "lm_head" in weights else []
        keep = keep_plain_copy(sum(w.numel() * w.element_size() for w in matrices))
        tied = "lm_head" not in weights  # the plain LM head is then the embedding table, needed anyway
        self.lm_head = Linear(weights.pop("lm_head", self.embed), ops=ops, keep_plain=keep or tied)

        def linear(name: str, bias: str | None = None) -> Linear:
            return Linear(weights.pop(name), weights.pop(bias, None) if bias else None, ops, keep)

        self.layers = torch.nn.ModuleList(
            Block(
                cfg,
                weights.pop(f"{i}.ln1"),
                Attention(cfg, i, linear(f"{i}.qkv", f"{i}.qkv_bias"), linear(f"{i}.o"), ops),
                weights.pop(f"{i}.ln2"),
                MLP(i, linear(f"{i}.gate_up"), linear(f"{i}.down"), ops),
                ops,
            )
            for i in range(cfg.num_layers)
        )
        self.register_buffer("inv_freq", rope_inv_freq(cfg).to(self.embed.device), persistent=False)

    def _apply(self, fn, recurse=True):
        """`.to()` and friends: move the weights, then choose the ops for their new device and dtype."""
        super()._apply(fn, recurse)
        self.ops = ops_for(self.embed.device, self.embed.dtype)
        for module in self.modules():
            if module is not self and hasattr(module, "ops"):
                module.ops = self.ops
        return self

    @classmethod
    def load(cls, path: Path, dtype: torch.dtype, device: str = "cpu") -> "Llama":
        """Read an HF checkpoint, fusing each projection's parts as model/projections.py describes."""
        cfg = ModelConfig.from_hf(path)
        raw = _read_safetensors(path)
        w: dict[str, torch.Tensor] = {}

        def take(name: str) -> torch.Tensor:
            return raw.pop(name).to(device=device, dtype=dtype).contiguous()

        def fused(names: list[str]) -> torch.Tensor:
            return take(names[0]) if len(names) == 1 else torch.cat([take(n) for n in names])

        w["embed"] = take("model.embed_tokens.weight")
        w["norm"] = take("model.norm.weight")
        if not cfg.tie_word_embeddings:
            w["lm_head"] = take("lm_head.weight")
        for i in range(cfg.num_layers):
            for proj in PROJECTIONS.values():
                w[f"{i}.{proj.name}"] = fused([proj.hf_weight(i, part) for part in proj.parts])
            if cfg.qkv_bias:
                qkv = PROJECTIONS["qkv"]
                w[f"{i}.qkv_bias"] = fused([qkv.hf_weight(i, part, "bias") for part in qkv.parts])
            w[f"{i}.ln1"] = take(f"model.layers.{i}.input_layernorm.weight")
            w[f"{i}.ln2"] = take(f"model.layers.{i}.post_attention_layernorm.weight")
        return cls(cfg, w)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv: KVCache,
        lora: LoRAStep,
    ) -> torch.Tensor:
        """Hidden states of the last token of each sequence: `[sequences, hidden]`."""
        eps = self.cfg.rms_norm_eps
        h = self.embed[input_ids]  # a copy: the residual stream, updated in place by the blocks
        cos, sin = self.rope(positions, h.dtype)
        x = self.ops.rms_norm(h, self.layers[0].ln1, eps)
        next_lns = [layer.ln1 for layer in self.layers[1:]] + [None]
        for layer, next_ln in zip(self.layers, next_lns, strict=True):
            x = layer(h, x, cos, sin, meta, kv, lora, next_ln)
        return self.ops.rms_norm(h[meta.last_token_index], self.final_norm, eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(
            f"{path} has no .safetensors weights (loraforge never loads pickled weights)"
        )
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                out[key] = st.get_tensor(key)
    return out
