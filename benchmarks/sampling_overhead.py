"""What OpenAI's sampling fields cost the engine (issue 16), all figures from one run, with ratios:

  1. the sampler alone on a decode batch of 64 greedy rows with default params: `sample` vs the greedy
     path it had before these fields (constraint check, argmax, sampled-rows check)  target >= 0.95x
  2. engine, 64 concurrent requests, greedy: defaults vs presence+frequency penalties, a 10-token
     logit_bias and logprobs with top 5 on every request  target >= 0.90x
  3. the same with temperature 0.8 / top_p 0.95 sampling instead of greedy  target >= 0.90x

Runs alternate (baseline, variant, baseline, variant) and each keeps its best, so a noisy neighbour on a
shared machine hurts both sides alike.

    .venv/bin/python benchmarks/sampling_overhead.py            # SmolLM2-135M, 64 requests x 32 tokens
    .venv/bin/python benchmarks/sampling_overhead.py --tokens 16 --model <dir>
"""

import argparse
import os
import time

import torch

from loraforge.hardware import describe
from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from loraforge.serve.engine.sequence import Sequence
from loraforge.serve.model.sampler import sample


def _prompts(tokenizer, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Question {i}: my card does not work abroad. What now?"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out.append(tokenizer(text, add_special_tokens=False).input_ids)
    return out


def _featured(base: SamplingParams, vocab: int) -> SamplingParams:
    return SamplingParams(
        **{
            **vars(base),
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
            "logit_bias": {t: -5.0 for t in range(100, vocab, vocab // 10)},
            "logprobs": 5,
        }
    )


def _tokens_per_s(engine: Engine, prompts, params: SamplingParams) -> float:
    start = time.perf_counter()
    seqs = engine.generate(prompts, [SamplingParams(**vars(params)) for _ in prompts])
    return sum(len(s.output_ids) for s in seqs) / (time.perf_counter() - start)


def _best_pair(engine, prompts, base, variant, rounds: int) -> tuple[float, float]:
    a = b = 0.0
    for _ in range(rounds):
        a = max(a, _tokens_per_s(engine, prompts, base))
        b = max(b, _tokens_per_s(engine, prompts, variant))
    return a, b


def _greedy_before(logits: torch.Tensor, seqs: list[Sequence], ops) -> list[int]:
    """The baseline: what `sample` ran for an all-greedy batch before the OpenAI fields were added."""
    for _, seq in enumerate(seqs):
        if seq.params.constraint is not None:
            raise AssertionError("no constraints in this benchmark")
    out = ops.argmax_rows(logits)
    sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
    assert not sampled
    return out


def _sampler_micro(engine: Engine, rows: int, reps: int) -> tuple[float, float]:
    """Microseconds per call for a greedy batch with default params: the old path, then `sample`."""
    logits = torch.randn(rows, engine.vocab_size).to(engine.dtype)
    seqs = [Sequence([1, 2, 3], SamplingParams(temperature=0)) for _ in range(rows)]
    ops = engine.model.ops
    best = [float("inf"), float("inf")]
    fns = (lambda: _greedy_before(logits, seqs, ops), lambda: sample(logits, seqs, ops))
    for _ in range(5):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            best[k] = min(best[k], (time.perf_counter() - start) / reps * 1e6)
    return best[0], best[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="alias or local HF directory")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32, help="output tokens per request (EOS ignored)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    print(f"CPU: {describe()}", flush=True)
    engine = Engine(
        EngineConfig(model=args.model, num_threads=args.threads, max_num_seqs=max(64, args.requests))
    )
    prompts = _prompts(engine.tokenizer, args.requests)
    print(f"model {engine.model_name} ({engine.dtype}), {args.requests} requests x {args.tokens} tokens")
    _tokens_per_s(engine, prompts[:4], SamplingParams(max_tokens=4, temperature=0))  # warm-up

    def row(name: str, a: float, b: float, ratio: float, target: float) -> None:  # printed as measured
        ok = "ok" if ratio >= target else "MISS"
        print(f"{name:<66} {a:>10.1f} {b:>10.1f} {ratio:>6.2f}x {target:>6.2f}x {ok}", flush=True)

    print(f"\n{'case':<66} {'baseline':>10} {'variant':>10} {'ratio':>7} {'target':>7}", flush=True)
    us_before, us_now = _sampler_micro(engine, args.requests, 200)
    row("sampler, 64 greedy rows, us/call: before vs now", us_before, us_now, us_before / us_now, 0.95)
    greedy = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    sampled = SamplingParams(max_tokens=args.tokens, temperature=0.8, top_p=0.95, seed=1, ignore_eos=True)
    for name, base in (("greedy", greedy), ("temperature 0.8", sampled)):
        a, b = _best_pair(engine, prompts, base, _featured(base, engine.vocab_size), args.rounds)
        row(f"engine tok/s, {name}: defaults vs penalties+bias+logprobs", a, b, b / a, 0.90)


if __name__ == "__main__":
    main()
