"""The Llama family (Llama, Mistral, Qwen2, SmolLM) in plain PyTorch, with fused QKV and gate-up weights.

Reads top to bottom like gpt-fast's model.py: `Llama` -> `Block` (attention, then MLP) -> `Linear`. Each
per-token operation goes through `ops` (kernels/ops.py: the C++ CPU kernels or plain PyTorch, chosen once),
and each projection's LoRA through `LoRAStep.add` (a no-op for a batch without adapters). Loads HF
safetensors. Matches transformers' LlamaForCausalLM numerics (RMSNorm in fp32, RoPE in fp32,
rotate-half layout) so greedy outputs agree token for token in fp32.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from loraforge.errors import ModelNotFoundError
from loraforge.serve.kernels.ops import TorchOps, ops_for
from loraforge.serve.lora.weights import LoRAStep
from loraforge.serve.model.attention import AttentionMetadata, attention
from loraforge.serve.model.config import ModelConfig, rope_inv_freq
from loraforge.serve.model.huge_pages import into_huge_pages
from loraforge.serve.model.kv_cache import KVCache
from loraforge.serve.model.linear import Linear, QuantLinear, frozen, keep_plain_copy
from loraforge.serve.model.projections import MODULE_TO_PROJECTION, PROJECTIONS


@dataclass
class DecodePlan:
    """What `ops.decode_layers` reads of the model, per layer in order: two norms (ln1, ln2), four weights
    (qkv, o, gate_up, down) with their scales, groups and formats, and the qkv bias (empty if none)."""

    rows: int  # the most rows (sequences) of a decode step this path takes
    norms: list[torch.Tensor]
    weights: list[torch.Tensor]
    scales: list[torch.Tensor]
    groups: list[int]
    formats: list[int]
    biases: list[torch.Tensor]
    heads: int
    kv_heads: int
    eps: float


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
    Weights are frozen parameters (`.parameters()`, `state_dict()`, `.to()` see them), except those held in a
    reduced `weight_format` (model/quant.py: "bf16" under fp32 activations, "int8", "int4"; the embedding
    table is then bf16), which cannot be moved or cast. `dtype`: the activations' (default: the embedding's).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        weights: dict[str, torch.Tensor],
        weight_format: str = "plain",
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.cfg, self.weight_format = cfg, weight_format
        self.dtype = dtype or weights["embed"].dtype
        embed = weights.pop("embed")
        self.embed = frozen(embed if weight_format == "plain" else embed.to(torch.bfloat16))
        self.final_norm = frozen(weights.pop("norm"))
        self.ops = ops = ops_for(self.embed.device, self.dtype)  # kernels or plain PyTorch, once
        # On CPU each linear weight is held in the form the small-batch kernels read (plain, or bf16 under
        # fp32 activations) and packed for oneDNN (larger batches). Where the linear weights take over a
        # quarter of RAM only one form is kept: the packed one for plain weights, the bf16 one for bf16.
        matrices = [w for name, w in weights.items() if name.split(".")[-1] in PROJECTIONS]
        matrices += [weights["lm_head"]] if "lm_head" in weights else []
        keep = keep_plain_copy(sum(w.numel() * w.element_size() for w in matrices))
        if weight_format == "plain":
            tied = "lm_head" not in weights  # the plain LM head is then the embedding table, needed anyway
            self.lm_head = Linear(weights.pop("lm_head", self.embed), ops=ops, keep_plain=keep or tied)
            self._build_layers(weights, lambda w, bias=None: Linear(w, bias, ops, keep))
        else:
            head_format = "bf16" if weight_format == "bf16" else "int8"  # int4's head stays int8 (quant.py)
            head = self.embed.data if weight_format == "bf16" else embed  # bf16: the table itself, shared
            packed = weight_format == "bf16" and keep
            self.lm_head = QuantLinear.quantize(weights.pop("lm_head", head), None, head_format, ops, packed)
            self._build_layers(
                weights, lambda w, b=None: QuantLinear.quantize(w, b, weight_format, ops, packed)
            )
        if self.embed.device.type == "cpu":
            self._into_huge_pages()

    def _build_layers(self, weights: dict[str, torch.Tensor], make) -> None:
        """The decoder blocks, each linear layer made by `make(weight, bias)`."""
        cfg, ops = self.cfg, self.ops

        def linear(name: str, bias: str | None = None):
            return make(weights.pop(name), weights.pop(bias, None) if bias else None)

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

    def linears(self) -> list[Linear | QuantLinear]:
        """The LM head and every decoder block's linear layers."""
        blocks = [(ly.attn.qkv, ly.attn.o, ly.mlp.gate_up, ly.mlp.down) for ly in self.layers]
        return [self.lm_head] + [lin for block in blocks for lin in block]

    def decode_read_bytes(self) -> int:
        """Bytes of linear weights a decode step of a few sequences reads: each layer's weight in the form
        the kernels read (plain, or as held in the reduced format)."""
        return sum(
            lin.qweight.nbytes if isinstance(lin, QuantLinear) else lin.shape.numel() * lin.dtype.itemsize
            for lin in self.linears()
        )

    def _into_huge_pages(self) -> None:
        """Move the weights a decode step streams (model/huge_pages.py) into one huge-page arena: the plain
        weights of the linear layers (the LM head's too, which may be the embedding), or the reduced ones."""
        linears = self.linears()
        if self.weight_format == "plain":
            params = list({id(lin.weight): lin.weight for lin in linears if lin.weight is not None}.values())
            for param, moved in zip(params, into_huge_pages([p.data for p in params]), strict=True):
                param.data = moved
            return
        moved = iter(into_huge_pages([t for lin in linears for t in (lin.qweight.data, lin.qweight.scales)]))
        for lin in linears:
            lin.qweight.data, lin.qweight.scales = next(moved), next(moved)

    def decode_plan(self) -> DecodePlan | None:
        """The layers' weights for `ops.decode_layers` (built once), or None where it does not apply: no
        such kernel, a linear layer without a form it runs, a bias outside qkv."""
        if not hasattr(self, "_decode_plan"):
            self._decode_plan = self._build_decode_plan()
        return self._decode_plan

    def _build_decode_plan(self) -> DecodePlan | None:
        if not self.ops.fused_decode:
            return None
        plan = DecodePlan(
            0, [], [], [], [], [], [], self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.rms_norm_eps
        )
        rows = []
        for layer in self.layers:
            linears = (layer.attn.qkv, layer.attn.o, layer.mlp.gate_up, layer.mlp.down)
            forms = [lin.decode_form() for lin in linears]
            if None in forms or any(lin.bias is not None for lin in linears[1:]):
                return None
            plan.norms += [layer.ln1, layer.ln2]
            plan.weights += [f.weight for f in forms]
            plan.scales += [f.scales for f in forms]
            plan.groups += [f.group for f in forms]
            plan.formats += [f.fmt for f in forms]
            plan.biases.append(layer.attn.qkv.bias if layer.attn.qkv.bias is not None else torch.empty(0))
            rows += [f.rows for f in forms]
        plan.rows = min(rows)
        return plan

    def _apply(self, fn, recurse=True):
        """`.to()` and friends: move the weights, then choose the ops for their new device and dtype."""
        super()._apply(fn, recurse)
        self.__dict__.pop("_decode_plan", None)  # built again from the moved weights
        self.dtype = self.embed.dtype
        self.ops = ops_for(self.embed.device, self.dtype)
        for module in self.modules():
            if module is not self and hasattr(module, "ops"):
                module.ops = self.ops
        return self

    @classmethod
    def load(
        cls,
        path: Path,
        dtype: torch.dtype,
        device: str = "cpu",
        weight_format: str = "plain",
        deltas: dict[tuple[int, str], torch.Tensor] | None = None,
    ):
        """Read an HF checkpoint, fusing each projection's parts as model/projections.py describes. Weights
        to be held in a reduced format are read in fp32 and rounded once, from the checkpoint's values.
        `deltas[(layer, module)]` (e.g. `(3, "q_proj")`) is added to that weight in fp32 before it is
        rounded: an adapter merged into the base (lora/adapter_file.py: `LoadedAdapter.deltas`)."""
        cfg = ModelConfig.from_hf(path)
        raw = _read_safetensors(path)
        for (layer, module), delta in (deltas or {}).items():
            name, j = MODULE_TO_PROJECTION[module]
            key = PROJECTIONS[name].hf_weight(layer, PROJECTIONS[name].parts[j])
            raw[key] = raw[key].float() + delta.float()
        w: dict[str, torch.Tensor] = {}
        matrix_dtype = dtype if weight_format == "plain" else torch.float32

        def take(name: str, as_dtype: torch.dtype = dtype) -> torch.Tensor:
            return raw.pop(name).to(device=device, dtype=as_dtype).contiguous()

        def fused(names: list[str], as_dtype: torch.dtype = dtype) -> torch.Tensor:
            parts = [take(n, as_dtype) for n in names]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        w["embed"] = take("model.embed_tokens.weight", matrix_dtype)
        w["norm"] = take("model.norm.weight")
        if not cfg.tie_word_embeddings:
            w["lm_head"] = take("lm_head.weight", matrix_dtype)
        for i in range(cfg.num_layers):
            for proj in PROJECTIONS.values():
                w[f"{i}.{proj.name}"] = fused([proj.hf_weight(i, p) for p in proj.parts], matrix_dtype)
            if cfg.qkv_bias:
                qkv = PROJECTIONS["qkv"]
                w[f"{i}.qkv_bias"] = fused([qkv.hf_weight(i, part, "bias") for part in qkv.parts])
            w[f"{i}.ln1"] = take(f"model.layers.{i}.input_layernorm.weight")
            w[f"{i}.ln2"] = take(f"model.layers.{i}.post_attention_layernorm.weight")
        return cls(cfg, w, weight_format, dtype)

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
        h = self.embed[input_ids].to(self.dtype)  # a copy: the residual stream, updated in place
        cos, sin = self.rope(positions, h.dtype)
        x = self.ops.rms_norm(h, self.layers[0].ln1, eps)
        plan = None if meta.is_prefill or lora.batch is not None else self.decode_plan()
        if plan is not None and h.shape[0] <= plan.rows:
            self.ops.decode_layers(h, x, cos, sin, meta, kv, plan)  # the loop below, in C++
            return self.ops.rms_norm(h[meta.last_token_index], self.final_norm, eps)
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
