"""Multi-LoRA serving throughput (issues 3 and 16), all figures from one run, with ratios:

  1. engine, 64 concurrent requests: base only vs over 32 distinct adapters (r=16, all linear)
  2. engine vs HF transformers + PEFT mixed-adapter generate(adapter_names=...), activations' dtype >= 10x
  3. batch-1 decode tokens/s: engine vs HF generate (llama.cpp: benchmarks/vs_llamacpp.py)
  4. adapter cold load: first request to a never-seen adapter minus a warm one                     <= 50 ms
  5. RSS with 100 resident adapters vs none (a fresh process holding only the engine)
     (with --device cuda: GPU memory allocated, with and without the adapters)
  The targets of issue 16, which replace issue 3's targets of rows 1 and 5:
  6. 64 concurrent requests over 32 adapters of PEFT's default shape (r=8, q/v_proj) vs base only    >= 0.92x
  7. 32 r=16 all-linear adapters: LoRA time per decode step (the time of the step's LoRA calls, timed inside
     decode steps) vs the time to read those adapters' bytes at this machine's read bandwidth (measured
     here: a large sum)                                                                              <= 1.2x
     Where adapters are held in bf16 under fp32 activations (CPUs without bf16 arithmetic, which widen
     every value before its multiply-add), also against reading them in fp32                        <= 1.3x
     The difference of whole steps with and without adapters is printed beside it: it also holds the
     sorting of the batch by adapter, but two ~80 ms steps differ by a few ms from run to run on a shared
     machine, as much as the LoRA time itself, so it is a cross-check, not the measure.
  8. memory: RSS growth of row 5 vs the adapters' own bytes (lora_A + lora_B at the engine's dtype)  <= +10%;
     and the resident bytes per r=8 q/v adapter vs its own bytes (the stacks' layout, no RSS needed)

Every request has a fixed number of output tokens (EOS ignored; `min_new_tokens` for HF). HF+PEFT runs the
same workload (~2 minutes); --hf-tokens N times it over fewer new tokens for a shorter run, which lowers its
tokens/s (its prefill weighs more: 59 tok/s at 32 tokens vs 71 at 128 in one session). The workload's pieces
are in serve_workload.py.

    .venv/bin/python benchmarks/serve_throughput.py            # the full workload (several minutes)
    .venv/bin/python benchmarks/serve_throughput.py --quick    # smaller workload, ~2-3 minutes

The model is the embedded SmolLM2-135M unless --model names another (an alias or a local HF directory);
--device cuda runs the engine and HF on a GPU (benchmarks/cuda_check.py does, on a random-weight model of
realistic size).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from serve_workload import (
    PEFT_DEFAULT,
    RSS_CHILD,
    cold_load_ms,
    decode_step_s,
    engine_batch1_decode,
    engine_run,
    hf_batch1,
    hf_mixed,
    make_adapters,
    own_bytes,
    prompts,
    read_bandwidth,
)

from loraforge.hardware import describe


def make_engine(args, adapter_dir: Path, max_adapters: int):
    from loraforge.serve.engine import Engine, EngineConfig

    config = EngineConfig(
        model=args.model,
        precision=args.precision,
        device=args.device,
        kv_cache_bytes=int(args.kv_cache_gib * (1 << 30)),
        adapter_dir=adapter_dir,
        max_adapters=max_adapters,
        num_threads=args.threads,
    )
    return Engine(config)


def rounds(engine, ids, adapters, max_tokens, repeats, decode_steps: bool = False) -> dict:
    """Base-only and adapter runs alternated `repeats` times: each side's best tokens/s (or, with
    `decode_steps`, its fastest decode step), and the per-round ratios of adapters to base."""
    inf = float("inf")
    best = {"base": 0.0, "lora": 0.0, "base_step": inf, "lora_step": inf, "lora_s": inf, "ratios": []}
    for _ in range(repeats):
        if decode_steps:
            base_step, _ = decode_step_s(engine, ids, [None] * len(ids), max_tokens)
            lora_step, lora_s = decode_step_s(engine, ids, adapters, max_tokens)
            for key, value in (("base_step", base_step), ("lora_step", lora_step), ("lora_s", lora_s)):
                best[key] = min(best[key], value)
            continue
        base, _ = engine_run(engine, ids, [None] * len(ids), max_tokens)
        lora, _ = engine_run(engine, ids, adapters, max_tokens)
        best["base"], best["lora"] = max(best["base"], base), max(best["lora"], lora)
        best["ratios"].append(lora / base)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="16 requests over 8 adapters, 32 tokens; 20 adapters RSS"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternating rounds of the compared runs (best kept; ratio 1 also as the median of rounds)",
    )
    ap.add_argument(
        "--hf-tokens", type=int, default=None, help="HF+PEFT new tokens per request (default: all)"
    )
    ap.add_argument("--model", default="smollm2-135m", help="alias or local HF directory")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--rss-adapters", type=int, default=None, help="adapters of row 5 (default 100)")
    ap.add_argument("--kv-cache-gib", type=float, default=0.5, help="the engine's KV cache")
    args = ap.parse_args()
    print(f"CPU: {describe()}", flush=True)
    torch.set_num_threads(args.threads)
    n_req, n_adapters, max_tokens, n_rss = (16, 8, 32, 20) if args.quick else (64, 32, 128, 100)
    n_rss = args.rss_adapters or n_rss

    from loraforge.models import load_tokenizer, pick_dtype, resolve_model

    model = resolve_model(args.model)
    tok = load_tokenizer(model)
    dtype = pick_dtype(args.precision, args.device)
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    t0 = time.perf_counter()
    names = make_adapters(model.path, work, max(n_rss, n_adapters + 5), rank=16, device=args.device)
    print(
        f"# {len(names)} random r=16 all-linear adapters written in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )

    ids = prompts(tok, n_req)
    mixed = [names[i % n_adapters] for i in range(n_req)]
    engine = make_engine(args, work, max(n_rss, n_adapters + 5))
    engine_run(engine, ids[:4], mixed[:4], 4)  # warm up; loads four adapters
    engine_run(engine, ids, mixed, 2)  # make all adapters of the workload resident (a warm server)
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(model.path, dtype=dtype).to(args.device).eval()
    hf_batch1(hf_model, ids[0], 4)  # warm up
    # Alternate the runs that are compared and keep each one's best: other processes on this machine come
    # and go, and alternating keeps a burst of load from landing on one side of a ratio only. Ratio 1 is
    # also given per round (base and adapters run back to back), as the median over rounds: the best runs
    # of the two sides may come from different rounds, under different load.
    base_tps = lora_tps = b1_engine = b1_hf = 0.0
    round_ratios = []
    for _ in range(args.repeats):
        base_round, secs = engine_run(engine, ids, [None] * n_req, max_tokens)
        if base_round > base_tps:
            base_tps, base_s = base_round, secs
        tps, secs = engine_run(engine, ids, mixed, max_tokens)
        if tps > lora_tps:
            lora_tps, lora_s = tps, secs
        round_ratios.append(tps / base_round)
        b1_engine = max(b1_engine, engine_batch1_decode(engine, ids[0], max_tokens))
        b1_hf = max(b1_hf, hf_batch1(hf_model, ids[0], max_tokens))
    del hf_model
    base_mib = engine.model.decode_read_bytes() / (1 << 20)
    held = f"{engine.model.weight_format} weights, adapters in {engine.lora.dtype}".replace("torch.", "")
    cold_ms, cold_total = cold_load_ms(engine, ids[0], names[n_adapters : n_adapters + 5])
    steps = rounds(engine, ids, mixed, max_tokens, args.repeats, decode_steps=True)
    itemsize = engine.lora.dtype.itemsize  # the adapters' element size as held (bf16 under bf16 weights)
    widened = engine.lora.dtype != engine.dtype  # held in bf16, widened to fp32 activations in the kernel
    lora_bytes = sum(own_bytes(work / n, itemsize) for n in names[:n_adapters])
    bandwidth = read_bandwidth(args.threads)
    del engine

    # Row 6: a second engine holding only adapters of PEFT's default shape (an engine pads every resident
    # adapter to the largest rank, so mixing them with the r=16 ones would measure those instead).
    qv_dir = work / "peft-default"
    qv_names = make_adapters(model.path, qv_dir, n_adapters, 8, args.device, PEFT_DEFAULT, "qv")
    engine = make_engine(args, qv_dir, n_adapters)
    qv_mixed = [qv_names[i % n_adapters] for i in range(n_req)]
    engine_run(engine, ids, qv_mixed, 2)  # all resident
    qv = rounds(engine, ids, qv_mixed, max_tokens, args.repeats)
    qv_resident = engine.adapters.resident_bytes / len(engine.adapters.resident)
    qv_own = own_bytes(qv_dir / qv_names[0], itemsize)
    del engine

    hf_tokens = min(args.hf_tokens or max_tokens, max_tokens)
    hf_tps, hf_s = hf_mixed(model.path, dtype, args.device, work, names[:n_adapters], ids, mixed, hf_tokens)

    child = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(work), json.dumps(names[:n_rss]), str(args.threads)]
        + [args.model, args.device],
        capture_output=True,
        text=True,
        check=True,
    )
    rss = json.loads(child.stdout.strip().splitlines()[-1])

    mib = 1 << 20
    load = os.getloadavg()[0]
    where = f"{args.threads} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(
        f"\nserve_throughput: {model.name}, {dtype} ({held}), {where}, {n_req} requests x {max_tokens}"
        f" tokens, {n_adapters} adapters r=16 all-linear (load avg {load:.1f})\n"
    )
    rss_growth = rss["after"] - rss["before"]
    rss_own = rss["resident"] * own_bytes(work / names[0], itemsize)
    lora_call_s, lora_floor = steps["lora_s"], lora_bytes / bandwidth  # row 7 (lora_s: row 1's run)
    step_diff = steps["lora_step"] - steps["base_step"]
    qv_ratio = qv["lora"] / qv["base"]
    rows = [
        ("row", "value", "detail", "ratio", "target"),
        ("1. engine base only, tok/s", f"{base_tps:,.0f}", f"{base_s:.1f} s", "", ""),
        (
            f"1. engine {n_adapters} adapters mixed, tok/s",
            f"{lora_tps:,.0f}",
            f"{lora_s:.1f} s",
            f"{lora_tps / base_tps:.2f}x of base; per round, median {statistics.median(round_ratios):.2f}x"
            f" ({', '.join(f'{r:.2f}' for r in round_ratios)})",
            "(issue 3's 0.90: replaced by 6)",
        ),
        (
            f"2. HF+PEFT {n_adapters} adapters mixed, tok/s",
            f"{hf_tps:,.0f}",
            f"{hf_s:.1f} s ({hf_tokens} tokens)",
            f"engine {lora_tps / hf_tps:.1f}x",
            verdict(lora_tps / hf_tps >= 10, ">= 10x"),
        ),
        ("3. engine batch-1 decode, tok/s", f"{b1_engine:,.1f}", "", f"{b1_engine / b1_hf:.1f}x HF", ""),
        ("3. HF generate batch-1 decode, tok/s", f"{b1_hf:,.1f}", "", "", ""),
        (
            "4. adapter cold load, added ms",
            f"{cold_ms:,.1f}",
            f"cold request {cold_total:.0f} ms",
            "",
            verdict(cold_ms <= 50, "<= 50 ms"),
        ),
        (
            f"5. {'RSS' if args.device == 'cpu' else 'GPU memory'}, {rss['resident']} adapters vs none, MiB",
            f"{rss['after'] / mib:,.0f} vs {rss['before'] / mib:,.0f}",
            f"adapters {rss['adapter_bytes'] / mib:,.0f} MiB",
            f"+{(rss['after'] / rss['before'] - 1) * 100:.0f}%",
            "(issue 3's 10%: replaced by 8)",
        ),
        (
            f"6. {n_adapters} adapters r=8 q/v mixed vs base, tok/s",
            f"{qv['lora']:,.0f} vs {qv['base']:,.0f}",
            f"per round {', '.join(f'{r:.2f}' for r in qv['ratios'])}",
            f"{qv_ratio:.2f}x of base",
            verdict(qv_ratio >= 0.92, ">= 0.92x"),
        ),
        (
            f"7. LoRA ms per decode step, {n_adapters} r=16 all-linear",
            f"{lora_call_s * 1e3:.1f} ms",
            f"{lora_bytes / mib:,.0f} MiB at {bandwidth / 1e9:.1f} GB/s read = {lora_floor * 1e3:.1f} ms;"
            f" steps: {steps['lora_step'] * 1e3:.1f} - base {steps['base_step'] * 1e3:.1f}"
            f" = {step_diff * 1e3:.1f} ms",
            f"{lora_call_s / lora_floor:.2f}x of read time ({step_diff / lora_floor:.2f}x by steps)",
            verdict(lora_call_s <= 1.2 * lora_floor, "<= 1.2x"),
        ),
    ]
    if widened:  # 16-bit adapters under fp32 activations: the proposed target of CPUs without bf16 arithmetic
        fp32_bytes = lora_bytes * 4 // itemsize
        fp32_floor = fp32_bytes / bandwidth
        rows.append(
            (
                "7. the same vs reading the adapters in fp32",
                f"{lora_call_s * 1e3:.1f} ms",
                f"{fp32_bytes / mib:,.0f} MiB = {fp32_floor * 1e3:.1f} ms",
                f"{lora_call_s / fp32_floor:.2f}x of fp32 read time",
                verdict(lora_call_s <= 1.3 * fp32_floor, "<= 1.3x (no bf16 arithmetic)"),
            )
        )
    rows += [
        (
            f"8. memory, {rss['resident']} r=16 all-linear adapters",
            f"RSS +{rss_growth / mib:,.0f} MiB",
            f"own bytes {rss_own / mib:,.0f} MiB",
            f"{(rss_growth / rss_own - 1) * 100:+.0f}% overhead",
            verdict(rss_growth <= 1.1 * rss_own, "<= +10%"),
        ),
        (
            "8. memory, one r=8 q/v adapter (resident bytes)",
            f"{qv_resident / mib:.2f} MiB",
            f"own bytes {qv_own / mib:.2f} MiB",
            f"{(qv_resident / qv_own - 1) * 100:+.0f}% overhead",
            verdict(qv_resident <= 1.1 * qv_own, "<= +10%"),
        ),
    ]
    adapter_mib = rss["adapter_bytes"] / rss["resident"] / mib
    rows.append(
        (
            "   weights read per decode step, MiB",
            f"{base_mib:,.0f} base",
            f"+{adapter_mib * n_adapters:,.0f} LoRA",
            f"{n_adapters} x {adapter_mib:.1f} MiB per adapter",
            "",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def verdict(met: bool, target: str) -> str:
    return f"{target}: {'met' if met else 'MISSED'}"


if __name__ == "__main__":
    main()
