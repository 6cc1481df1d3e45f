"""Next-token choice per row: greedy, or temperature/top-k/top-p sampling, optionally seeded per request."""

import torch

from loraforge.serve.engine.sequence import Sequence
from loraforge.serve.kernels.ops import TORCH_OPS, TorchOps
from loraforge.serve.model import logprobs, penalties

MIN_TEMPERATURE = 1e-5  # smaller ones (valid in the API: 1e-300) act as this; in fp32 they round to 0


def sample(logits: torch.Tensor, seqs: list[Sequence], ops: TorchOps = TORCH_OPS) -> list[int]:
    """`logits` `[rows, vocab]` on CPU (the model's dtype), one row per sequence; `ops` from kernels/ops.py.

    Greedy rows take the argmax of the logits as they are (exact: fp32 holds every bf16 value); only the
    rows that sample are converted to fp32. Rows under a constraint first lose every token it does not allow
    (in place: the logits are this step's own). Rows with `logit_bias` or penalties then get them
    (penalties.py, the batch in fp32); rows that asked for logprobs get them recorded (logprobs.py)."""
    for i, seq in enumerate(seqs):
        if seq.constraint_state is not None:  # engine/constraints.py: a label set or a grammar
            seq.constraint_state.mask(logits, i, seq.output_ids)
    processed, scored = _extras(seqs)
    if processed:
        logits = penalties.apply(logits, seqs, processed)
    out = ops.argmax_rows(logits)
    sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if not sampled:
        if scored:
            logprobs.record(seqs, scored, out, logits, {})
        return out
    rows = logits[sampled].float()
    params = [seqs[i].params for i in sampled]
    temps = torch.tensor([p.temperature for p in params], dtype=rows.dtype)[:, None].clamp_min(
        MIN_TEMPERATURE
    )
    # The row's maximum first: a tiny temperature then sends the others to -inf, never inf - inf = NaN.
    rows = (rows - rows.max(dim=-1, keepdim=True).values) / temps
    top_ks = [p.top_k for p in params]
    if any(k > 0 for k in top_ks):
        k_max = max(k if k > 0 else rows.shape[-1] for k in top_ks)
        kth = rows.topk(min(k_max, rows.shape[-1]), dim=-1).values  # sorted descending
        idx = torch.tensor([min(k, rows.shape[-1]) - 1 if k > 0 else kth.shape[-1] - 1 for k in top_ks])
        threshold = kth.gather(1, idx[:, None])
        no_k = torch.tensor([k <= 0 for k in top_ks])[:, None]
        rows = torch.where((rows < threshold) & ~no_k, float("-inf"), rows)
    probs = rows.softmax(dim=-1)
    top_ps = torch.tensor([p.top_p for p in params], dtype=probs.dtype)[:, None]
    if (top_ps < 1.0).any():
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_ps
        drop[:, 0] = False  # even a top_p that rounds to 0 in fp32 (1e-300)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
        rows = rows.masked_fill(torch.zeros_like(drop).scatter_(1, order, drop), float("-inf"))
    for row, i in enumerate(sampled):
        # Each request draws from its own generator, so a seed reproduces the output whatever the batch.
        out[i] = int(torch.multinomial(probs[row], 1, generator=seqs[i].generator).item())
    if scored:
        logprobs.record(seqs, scored, out, logits, {i: rows[row] for row, i in enumerate(sampled)})
    return out


def _extras(seqs: list[Sequence]) -> tuple[list[int], list[int]]:
    """The rows with logit processors, and the rows that want logprobs. One flag per row, set when the
    sequence was made, so a batch with neither costs the plain greedy path one short pass
    (benchmarks/sampling_overhead.py)."""
    extra = [i for i, seq in enumerate(seqs) if seq.sampling_extras]
    if not extra:
        return extra, extra
    processed = [i for i in extra if seqs[i].params.processed]
    return processed, [i for i in extra if seqs[i].params.logprobs is not None]
