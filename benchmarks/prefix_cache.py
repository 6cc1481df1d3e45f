"""Prefix cache (issue 16): time to first token and total time with and without it, same run, with ratios.

Workload: `--requests` (32) chat requests that share a ~500-token system prompt (a policy text plus few-shot
examples, as a production prompt has) and differ in their last message, all submitted at once, greedy,
`--max-tokens` (16) new tokens each, EOS ignored. Each mode starts from an empty cache, so with the cache
the shared start is prefilled once, by the first request, and the others prefill only their own ~20 tokens.
It prints how many requests' outputs are equal. The model is the embedded SmolLM2-135M.

    .venv/bin/python benchmarks/prefix_cache.py [--requests 32] [--max-tokens 16] [--precision auto]
"""

import argparse
import statistics
import time

import torch

from loraforge.hardware import describe
from loraforge.serve.engine import Engine, EngineConfig, SamplingParams

POLICY = (
    "You are the support assistant of a retail bank. Answer in two short sentences, politely, without "
    "promising refunds or giving legal advice. If the customer reports fraud, tell them to freeze the card "
    "in the app first. Never ask for a full card number, a PIN or a password. Mention fees only when asked. "
)
EXAMPLES = [
    ("My card has not arrived yet.", "Cards arrive within 5 working days; you can track it in the app."),
    ("What is the exchange rate today?", "Rates are shown live in the app before you confirm an exchange."),
    ("I was charged twice for a coffee.", "A duplicate pending charge usually drops off within 3 days."),
    ("Can I top up with a cheque?", "We do not take cheques; top up by card or bank transfer instead."),
    ("Why was my transfer declined?", "Transfers are declined for low balance, limits or security checks."),
    ("How do I change my PIN?", "Change it at any of our ATMs under PIN services, or in the app."),
    ("Is there a fee for ATM withdrawals?", "The first 200 GBP a month are free, then 2% per withdrawal."),
    ("My virtual card does not work online.", "Check that online payments are switched on for that card."),
]
QUESTIONS = [
    "my card got stuck in the machine",
    "how long does a transfer to Spain take",
    "I want to close my account",
    "the app says my identity check failed",
    "can I get a refund for a wrong top-up",
    "someone used my card without permission",
    "how do I order a physical card",
    "why is my balance not updated",
]


def system_prompt(tokenizer, target_tokens: int) -> str:
    """The policy and as many few-shot examples (cycled) as make the shared start about `target_tokens`."""
    text, i = POLICY, 0
    while len(tokenizer(text).input_ids) < target_tokens:
        q, a = EXAMPLES[i % len(EXAMPLES)]
        text += f"\nExample {i + 1}. Customer: {q} Assistant: {a}"
        i += 1
    return text


def workload(tokenizer, n: int, prefix_tokens: int) -> tuple[list[list[int]], int]:
    """n prompts with the same system message; returns them and the length of their common token prefix."""
    system = system_prompt(tokenizer, prefix_tokens)
    prompts = []
    for i in range(n):
        msg = f"Request {i}: {QUESTIONS[i % len(QUESTIONS)]}."
        messages = [{"role": "system", "content": system}, {"role": "user", "content": msg}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer(text, add_special_tokens=False).input_ids)
    common = next(j for j in range(len(prompts[0])) if len({p[j] for p in prompts}) > 1)
    return prompts, common


def run(engine: Engine, prompts: list[list[int]], max_tokens: int) -> tuple[list[float], float, list]:
    """Submit every prompt at once and step to the end: each request's time to first token, the total
    time, and the outputs."""
    start = time.perf_counter()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    seqs = [engine.add_request(p, SamplingParams(**vars(params))) for p in prompts]
    first: dict[int, float] = {}
    while engine.has_work():
        for out in engine.step():
            first.setdefault(out.seq.seq_id, time.perf_counter() - start)
    total = time.perf_counter() - start
    return [first[s.seq_id] for s in seqs], total, [s.output_ids for s in seqs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prefix-tokens", type=int, default=500, help="length of the shared system prompt")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"CPU: {describe()}", flush=True)
    torch.set_num_threads(args.threads)
    results, outputs = {}, {}
    for mode, on in (("without cache", False), ("with cache", True)):
        engine = Engine(EngineConfig(precision=args.precision, prefix_cache=on))
        prompts, common = workload(engine.tokenizer, args.requests, args.prefix_tokens)
        run(engine, [[1, 2, 3, 4]], 2)  # warm-up (kernels, packed weights), nothing shared with the workload
        ttft, total, outputs[mode] = run(engine, prompts, args.max_tokens)
        stats = engine.blocks.stats
        rate = stats.hit_tokens / stats.queried_tokens if stats.queried_tokens else 0.0
        results[mode] = (statistics.mean(ttft), statistics.median(ttft), max(ttft), total, rate)
        print(f"{mode}: mean TTFT {results[mode][0]:.2f} s, total {total:.2f} s", flush=True)
        del engine
    lengths = [len(p) for p in prompts]
    print(
        f"\n{args.requests} requests, prompts {min(lengths)}-{max(lengths)} tokens sharing the first "
        f"{common}, {args.max_tokens} new tokens each, {engine_dtype(args.precision)}\n"
    )
    print("| mode | mean TTFT s | median TTFT s | max TTFT s | total s | prompt tokens from cache |")
    print("|---|---|---|---|---|---|")
    for mode, (mean, median, worst, total, rate) in results.items():
        print(f"| {mode} | {mean:.3f} | {median:.3f} | {worst:.3f} | {total:.2f} | {rate:.0%} |")
    off, on = results["without cache"], results["with cache"]
    print(f"\nmean TTFT: {off[0] / on[0]:.2f}x faster with the cache; total time: {off[3] / on[3]:.2f}x")
    same = sum(a == b for a, b in zip(outputs["without cache"], outputs["with cache"], strict=True))
    # fp32 must agree exactly (tests/serve/engine/test_prefix_cache.py); in bf16 a batch of another shape
    # may round a matmul differently and flip a near-tie.
    print(f"requests whose outputs are equal with and without the cache: {same}/{args.requests}")


def engine_dtype(precision: str) -> str:
    from loraforge.models import pick_dtype

    return str(pick_dtype(precision, "cpu")).removeprefix("torch.")


if __name__ == "__main__":
    main()
