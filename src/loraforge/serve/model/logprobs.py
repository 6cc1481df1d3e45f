"""Log-probabilities of chosen tokens and of the most likely alternatives (OpenAI's `logprobs`).

Which distribution: the one the token was actually chosen from, after the processors the request asked for.
That is `log_softmax` of the logits after the constraint mask, `logit_bias` and the presence/frequency
penalties, divided by the temperature, with the tokens top-k/top-p removed set to -inf: exactly what
`torch.multinomial` draws from in the sampler. A greedy row (temperature 0) reports that distribution at
temperature 1 without top-k/top-p (its argmax is the chosen token). vLLM reports the raw model distribution
by default instead; ours is what was sampled, so the logprob of a forced token (bias 100) is ~0. Prompt
tokens (`echo`) were never sampled: theirs are the raw model's, at temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from loraforge.serve.engine.sequence import Sequence


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the token there, its log-probability, and the `top` most likely (id, logprob) pairs,
    most likely first (as many as the request asked for)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def entries(logp: torch.Tensor, chosen: list[int], ks: list[int]) -> list[TokenLogprob]:
    """`logp` `[rows, vocab]` fp32 log-probabilities; one entry per row for its `chosen` token, with its
    `ks[row]` most likely tokens."""
    picked = logp.gather(1, torch.tensor(chosen)[:, None]).squeeze(1).tolist()
    k_max = min(max(ks), logp.shape[-1])
    tops_v, tops_i = logp.topk(k_max, dim=-1) if k_max else (logp[:, :0], logp[:, :0].long())
    tops_v, tops_i = tops_v.tolist(), tops_i.tolist()
    return [
        TokenLogprob(token, lp, tuple(zip(ids[:k], vs[:k], strict=True)))
        for token, lp, ids, vs, k in zip(chosen, picked, tops_i, tops_v, ks, strict=True)
    ]


def record(
    seqs: list[Sequence],
    rows: list[int],
    chosen: list[int],
    logits: torch.Tensor,
    filtered: dict[int, torch.Tensor],
) -> None:
    """Store the logprobs of this step's token on every sequence that asked for them. `logits` are the
    processed logits of the batch; `filtered[i]`, for sampled rows, the row the sampler drew from
    (temperature applied, -inf where top-k/top-p removed a token). The entry goes at the sequence's
    current output position, so a step that is run again (a failed batch) overwrites it. `rows`: the
    sequences that asked."""
    stacked = torch.stack([filtered[i] if i in filtered else logits[i].float() for i in rows])
    logp = stacked.log_softmax(dim=-1)
    found = entries(logp, [chosen[i] for i in rows], [seqs[i].params.logprobs for i in rows])
    for i, entry in zip(rows, found, strict=True):
        seq = seqs[i]
        del seq.logprobs[len(seq.output_ids) :]
        seq.logprobs.append(entry)


def prompt_entries(logits: torch.Tensor, targets: list[int], k: int) -> list[TokenLogprob]:
    """Logprobs of the prompt tokens `targets` from the logits of the positions before each (raw, fp32)."""
    return entries(logits.float().log_softmax(dim=-1), targets, [k] * len(targets))
