"""The Llama family (Llama, Mistral, Qwen2, SmolLM) in plain PyTorch, with fused QKV and gate-up weights.

Loads HF safetensors. Matches transformers' LlamaForCausalLM numerics (RMSNorm in fp32, RoPE in fp32,
rotate-half layout) so greedy outputs agree token for token in fp32.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from loraforge.errors import ModelNotFoundError
from loraforge.serve.engine.attention import AttentionMetadata, attention
from loraforge.serve.engine.cpu_kernels import kernels_for
from loraforge.serve.engine.kv_cache import KVCache
from loraforge.serve.engine.linear import Linear, keep_plain_copy
from loraforge.serve.engine.lora_math import LoRABatch, LoRAWeights

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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on `[tokens, heads, head_dim]` with cos/sin `[tokens, 1, head_dim]`."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # In fp32 like transformers: bf16 variance loses too much precision.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


@dataclass
class Layer:
    """One decoder layer's weights: the two RMSNorm scales and the four (fused) projections."""

    ln1: torch.Tensor
    qkv: Linear
    o: Linear
    ln2: torch.Tensor
    gate_up: Linear
    down: Linear


class Llama(torch.nn.Module):
    """Weights as plain tensors (each linear layer a `Linear`); `forward` runs a flat batch of tokens from
    many sequences."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.cfg = cfg
        self.embed = weights.pop("embed")
        self.final_norm = weights.pop("norm")
        # C++ CPU kernels (cpu_kernels.py): small-batch linear, (add +) RMSNorm, RoPE, SiLU-mul, attention
        self.kernels = kernels = kernels_for(self.embed.device, self.embed.dtype)
        # On CPU each linear weight is held plain (for the 1-2 row kernel) and packed (for oneDNN): twice
        # the memory. Where the linear weights take over a quarter of RAM only the packed form is kept.
        matrices = [
            w for name, w in weights.items() if name.split(".")[-1] in ("qkv", "o", "gate_up", "down")
        ]
        matrices += [weights["lm_head"]] if "lm_head" in weights else []
        keep = keep_plain_copy(sum(w.numel() * w.element_size() for w in matrices))
        tied = "lm_head" not in weights  # the plain LM head is then the embedding table, needed anyway
        self.lm_head = Linear(weights.pop("lm_head", self.embed), kernels=kernels, keep_plain=keep or tied)
        self.layers = [
            Layer(
                ln1=weights.pop(f"{i}.ln1"),
                qkv=Linear(weights.pop(f"{i}.qkv"), weights.pop(f"{i}.qkv_bias", None), kernels, keep),
                o=Linear(weights.pop(f"{i}.o"), kernels=kernels, keep_plain=keep),
                ln2=weights.pop(f"{i}.ln2"),
                gate_up=Linear(weights.pop(f"{i}.gate_up"), kernels=kernels, keep_plain=keep),
                down=Linear(weights.pop(f"{i}.down"), kernels=kernels, keep_plain=keep),
            )
            for i in range(cfg.num_layers)
        ]
        self.inv_freq = rope_inv_freq(cfg).to(self.embed.device)
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim

    def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None:  # one pass instead of eight ops; the same roundings
            return self.kernels.rms_norm(x, weight, self.cfg.rms_norm_eps)
        return rms_norm(x, weight, self.cfg.rms_norm_eps)

    def add_norm(self, h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """`h += delta` in place (the residual stream), then RMSNorm of h: one pass with the kernels."""
        if self.kernels is not None:
            return self.kernels.add_rms_norm(h, delta, weight, self.cfg.rms_norm_eps)
        h.add_(delta)
        return rms_norm(h, weight, self.cfg.rms_norm_eps)

    def rope_qk(
        self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q `[tokens, heads, dim]` and k `[tokens, kv_heads, dim]` of the fused projection, rotated."""
        cfg = self.cfg
        if self.kernels is not None:
            return self.kernels.rope_qk(qkv, cos.squeeze(1), sin.squeeze(1), cfg.num_heads, cfg.num_kv_heads)
        q, k = qkv[:, : self.q_size], qkv[:, self.q_size : self.q_size + self.kv_size]
        q = apply_rope(q.reshape(-1, cfg.num_heads, cfg.head_dim), cos, sin)
        return q, apply_rope(k.reshape(-1, cfg.num_kv_heads, cfg.head_dim), cos, sin)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """`silu(gate) * up` for the fused `[gate | up]` projection."""
        if self.kernels is not None:
            return self.kernels.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    @classmethod
    def load(cls, path: Path, dtype: torch.dtype, device: str = "cpu") -> "Llama":
        cfg = ModelConfig.from_hf(path)
        raw = _read_safetensors(path)
        w: dict[str, torch.Tensor] = {}

        def take(name: str) -> torch.Tensor:
            return raw.pop(name).to(device=device, dtype=dtype).contiguous()

        w["embed"] = take("model.embed_tokens.weight")
        w["norm"] = take("model.norm.weight")
        if not cfg.tie_word_embeddings:
            w["lm_head"] = take("lm_head.weight")
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            w[f"{i}.qkv"] = torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
            if cfg.qkv_bias:
                w[f"{i}.qkv_bias"] = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
            w[f"{i}.o"] = take(p + "self_attn.o_proj.weight")
            w[f"{i}.gate_up"] = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
            w[f"{i}.down"] = take(p + "mlp.down_proj.weight")
            w[f"{i}.ln1"] = take(p + "input_layernorm.weight")
            w[f"{i}.ln2"] = take(p + "post_attention_layernorm.weight")
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
        lora: LoRABatch | None = None,
        lora_weights: LoRAWeights | None = None,
    ) -> torch.Tensor:
        """Hidden states of the last token of each sequence: `[sequences, hidden]`."""
        cfg = self.cfg
        h = self.embed[input_ids]  # a copy: the residual stream, updated in place below
        cos, sin = self.rope(positions, h.dtype)
        use_lora = lora is not None and lora_weights is not None and lora.num_active > 0
        x = self.norm(h, self.layers[0].ln1)
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(x)
            if use_lora:
                lora_weights.add(i, "qkv", x, qkv, lora)
            q, k = self.rope_qk(qkv, cos, sin)
            v = qkv[:, self.q_size + self.kv_size :].view(-1, cfg.num_kv_heads, cfg.head_dim)
            a = attention(q, k, v, i, meta, kv).reshape(-1, self.q_size)
            o = layer.o(a)
            if use_lora:
                lora_weights.add(i, "o", a, o, lora)
            x = self.add_norm(h, o, layer.ln2)
            gu = layer.gate_up(x)
            if use_lora:
                lora_weights.add(i, "gate_up", x, gu, lora)
            m = self.silu_mul(gu)
            d = layer.down(m)
            if use_lora:
                lora_weights.add(i, "down", m, d, lora)
            if i + 1 < len(self.layers):  # the residual add fused with the next layer's first norm
                x = self.add_norm(h, d, self.layers[i + 1].ln1)
            else:
                h.add_(d)
        return self.norm(h[meta.last_token_index], self.final_norm)

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
