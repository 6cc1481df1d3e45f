"""OpenAI's logit processors, per row of a mixed batch: `logit_bias`, `presence_penalty`,
`frequency_penalty`.

For each row with any of them (OpenAI's formula, applied to the logits before the temperature):

    logit[t] += bias[t] - frequency_penalty * count[t] - presence_penalty * (count[t] > 0)

where `count[t]` is how often token t was generated so far (the completion only, not the prompt: vLLM's
and OpenAI's reading). The whole batch is done in two scatter-adds over the flat logits, one for the biases
and one for the penalties, without a Python loop over the vocabulary or a dense `[rows, vocab]` count
table; rows without processors are untouched, so neighbours never change each other's output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from loraforge.serve.engine.sequence import Sequence

MAX_BIAS = 100.0  # OpenAI's range for a logit_bias value: [-100, 100]
MAX_PENALTY = 2.0  # and for presence/frequency penalties: [-2, 2]


def check(params, vocab_size: int) -> tuple[str, str] | None:
    """(field, message) of the first invalid processor setting of `params` (a SamplingParams), or None."""
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(params, name)
        if not -MAX_PENALTY <= value <= MAX_PENALTY:
            return name, f"must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}]"
    for token, bias in (params.logit_bias or {}).items():
        if not 0 <= token < vocab_size:
            return "logit_bias", f"token id {token} is outside the vocabulary [0, {vocab_size})"
        if not -MAX_BIAS <= bias <= MAX_BIAS:
            return "logit_bias", f"the bias of token {token} must be in [-{MAX_BIAS:g}, {MAX_BIAS:g}]"
    return None


def apply(logits: torch.Tensor, seqs: list[Sequence], rows: list[int]) -> torch.Tensor:
    """The batch's logits in fp32 (the model's own tensor when already fp32: changed in place) with the
    processors of `rows` applied."""
    out = logits.float()
    vocab = out.shape[-1]
    flat = out.view(-1)
    bias_idx, bias_val = [], []
    pen_ids, pen_rows, freq, pres = [], [], [], []
    for i in rows:
        p = seqs[i].params
        if p.logit_bias:
            bias_idx += [i * vocab + t for t in p.logit_bias]
            bias_val += list(p.logit_bias.values())
        if (p.presence_penalty or p.frequency_penalty) and seqs[i].output_ids:
            pen_ids.append(torch.tensor(seqs[i].output_ids, dtype=torch.long) + i * vocab)
            pen_rows.append(i)
        freq.append(p.frequency_penalty)
        pres.append(p.presence_penalty)
    if bias_idx:
        flat.index_add_(0, torch.tensor(bias_idx), torch.tensor(bias_val, dtype=out.dtype))
    if pen_ids:
        slots, counts = torch.cat(pen_ids).unique(return_counts=True)
        row_freq = torch.zeros(out.shape[0], dtype=out.dtype)
        row_pres = torch.zeros(out.shape[0], dtype=out.dtype)
        row_freq[rows] = torch.tensor(freq, dtype=out.dtype)
        row_pres[rows] = torch.tensor(pres, dtype=out.dtype)
        of_row = slots // vocab
        flat.index_add_(0, slots, -(counts.to(out.dtype) * row_freq[of_row] + row_pres[of_row]))
    return out
