"""Multi-LoRA serving throughput (issue 3), all figures from one run, with ratios:

  1. engine, 64 concurrent requests: base only vs over 32 distinct adapters (r=16, all linear)  >= 0.90x
  2. engine vs HF transformers + PEFT mixed-adapter generate(adapter_names=...), same weights/dtype  >= 10x
  3. batch-1 decode tokens/s: engine vs HF generate (llama.cpp BF16 here: ~62 tok/s, cpu-anchors.md)
  4. adapter cold load: first request to a never-seen adapter minus a warm one                     <= 50 ms
  5. RSS with 100 resident adapters vs none (a fresh process holding only the engine)              <= +10%
     (with --device cuda: GPU memory allocated, with and without the adapters)

Every request has a fixed number of output tokens (EOS ignored; `min_new_tokens` for HF). HF+PEFT runs the
same workload (~2 minutes); --hf-tokens N times it over fewer new tokens for a shorter run, which lowers its
tokens/s (its prefill weighs more: 59 tok/s at 32 tokens vs 71 at 128 in one session).

    .venv/bin/python benchmarks/serve_throughput.py            # the full workload (several minutes)
    .venv/bin/python benchmarks/serve_throughput.py --quick    # smaller workload, ~1-2 minutes

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

from loraforge.hardware import describe

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOPICS = [
    "my card",
    "a transfer",
    "the exchange rate",
    "a refund",
    "my PIN",
    "cash withdrawal",
    "top-up",
    "fees",
]


def prompts(tokenizer, n: int) -> list[list[int]]:
    """n chat prompts of ~30 tokens, all different."""
    out = []
    for i in range(n):
        msg = f"Question {i}: I have a problem with {TOPICS[i % len(TOPICS)]}. What should I do next?"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": msg}], tokenize=False, add_generation_prompt=True
        )
        out.append(tokenizer(text, add_special_tokens=False).input_ids)
    return out


def make_adapters(model_path: Path, root: Path, count: int, rank: int, device: str = "cpu") -> list[str]:
    """`count` random PEFT adapters (all linear layers); lora_B randomised so that none is a no-op."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # fp32 on CPU; on a GPU the model's bf16 (a big model in fp32 would take long to write 100 times)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ALL_LINEAR))
    names = []
    for i in range(count):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
                elif "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        names.append(f"bench-{i:03d}")
        model.save_pretrained(root / names[-1])
    return names


def engine_run(engine, ids, adapters, max_tokens) -> tuple[float, float]:
    """(generated tokens/s, seconds) for all requests submitted at once."""
    from loraforge.serve.engine import SamplingParams

    start = time.perf_counter()
    seqs = engine.generate(
        ids, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True), adapters
    )
    secs = time.perf_counter() - start
    return sum(len(s.output_ids) for s in seqs) / secs, secs


def engine_batch1_decode(engine, ids, max_tokens) -> float:
    """Decode tokens/s of one request alone (time after its first token)."""
    from loraforge.serve.engine import SamplingParams

    seq = engine.add_request(ids, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    engine.step()  # prefill -> first token
    start = time.perf_counter()
    while engine.has_work():
        engine.step()
    return (len(seq.output_ids) - 1) / (time.perf_counter() - start)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hf_mixed(
    model_path, dtype, device, adapter_root, names, ids, adapters, max_tokens
) -> tuple[float, float]:
    """HF + PEFT: one left-padded batch, adapter chosen per row with `adapter_names`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    model = PeftModel.from_pretrained(base, adapter_root / names[0], adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(adapter_root / n, adapter_name=n)
    model.eval()
    width = max(len(i) for i in ids)
    input_ids = torch.tensor([[2] * (width - len(i)) + i for i in ids], device=device)
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
    kw = {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False, "pad_token_id": 2}
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, adapter_names=adapters, **kw)
    synchronize(device)
    secs = time.perf_counter() - start
    return (out.shape[1] - width) * len(ids) / secs, secs


def hf_batch1(model, ids, max_tokens) -> float:
    """HF generate decode tokens/s of one request (time after the first token)."""
    x = torch.tensor([ids], device=model.device)
    kw = {"do_sample": False, "pad_token_id": 2}
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(input_ids=x, max_new_tokens=1, min_new_tokens=1, **kw)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(input_ids=x, max_new_tokens=max_tokens, min_new_tokens=max_tokens, **kw)
        total = time.perf_counter() - t0
    return (max_tokens - 1) / (total - ttft)


def cold_load_ms(engine, ids, names) -> tuple[float, float]:
    """Median (cold request - warm request) latency for max_tokens=1, and the median cold request itself."""
    from loraforge.serve.engine import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    added, colds = [], []
    for name in names:
        t0 = time.perf_counter()
        engine.generate([ids], params, [name])
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine.generate([ids], params, [name])
        warm = time.perf_counter() - t0
        added.append((cold - warm) * 1000)
        colds.append(cold * 1000)
    return statistics.median(added), statistics.median(colds)


RSS_CHILD = """
import json, sys, torch
from pathlib import Path
from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
root, names, threads = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
model, device = sys.argv[4], sys.argv[5]
def rss():  # on a GPU: the memory torch has allocated there
    if device.startswith('cuda'):
        return torch.cuda.memory_allocated()
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) * 1024
config = EngineConfig(model=model, device=device, adapter_dir=root, max_adapters=len(names),
                      num_threads=threads)
engine = Engine(config)
engine.generate([[1, 2, 3, 4]], SamplingParams(max_tokens=4, temperature=0))
before = rss()
engine.generate([[1, 2, 3, 4]] * len(names), SamplingParams(max_tokens=1, temperature=0), names)
after = rss()
print(json.dumps({'before': before, 'after': after, 'resident': len(engine.adapters.resident),
                  'adapter_bytes': engine.adapters.resident_bytes}))
"""


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
    from loraforge.serve.engine import Engine, EngineConfig

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
    engine = Engine(
        EngineConfig(
            model=args.model,
            precision=args.precision,
            device=args.device,
            kv_cache_bytes=int(args.kv_cache_gib * (1 << 30)),
            adapter_dir=work,
            max_adapters=max(n_rss, n_adapters + 5),
            num_threads=args.threads,
        )
    )
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
    m = engine.model
    per_layer = [(ly.attn.qkv, ly.attn.o, ly.mlp.gate_up, ly.mlp.down) for ly in m.layers]
    linears = [m.lm_head] + [lin for layer in per_layer for lin in layer]
    base_mib = sum(lin.shape.numel() * lin.dtype.itemsize for lin in linears) / (1 << 20)
    cold_ms, cold_total = cold_load_ms(engine, ids[0], names[n_adapters : n_adapters + 5])
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
        f"\nserve_throughput: {model.name}, {dtype}, {where}, {n_req} requests x {max_tokens}"
        f" tokens, {n_adapters} adapters r=16 all-linear (load avg {load:.1f})\n"
    )
    rows = [
        ("1. engine base only, tok/s", f"{base_tps:,.0f}", f"{base_s:.1f} s", ""),
        (
            f"1. engine {n_adapters} adapters mixed, tok/s",
            f"{lora_tps:,.0f}",
            f"{lora_s:.1f} s",
            f"{lora_tps / base_tps:.2f}x of base; per round, median {statistics.median(round_ratios):.2f}x"
            f" ({', '.join(f'{r:.2f}' for r in round_ratios)}) (target >= 0.90)",
        ),
        (
            f"2. HF+PEFT {n_adapters} adapters mixed, tok/s",
            f"{hf_tps:,.0f}",
            f"{hf_s:.1f} s ({hf_tokens} tokens)",
            f"engine {lora_tps / hf_tps:.1f}x (target >= 10)",
        ),
        ("3. engine batch-1 decode, tok/s", f"{b1_engine:,.1f}", "", f"{b1_engine / b1_hf:.1f}x HF"),
        ("3. HF generate batch-1 decode, tok/s", f"{b1_hf:,.1f}", "", ""),
        (
            "4. adapter cold load, added ms",
            f"{cold_ms:,.1f}",
            f"cold request {cold_total:.0f} ms",
            "target <= 50 ms",
        ),
        (
            f"5. {'RSS' if args.device == 'cpu' else 'GPU memory'}, {rss['resident']} adapters vs none, MiB",
            f"{rss['after'] / mib:,.0f} vs {rss['before'] / mib:,.0f}",
            f"adapters {rss['adapter_bytes'] / mib:,.0f} MiB",
            f"+{(rss['after'] / rss['before'] - 1) * 100:.0f}% (target <= 10%)",
        ),
    ]
    adapter_mib = rss["adapter_bytes"] / rss["resident"] / mib
    rows.append(
        (
            "   weights read per decode step, MiB",
            f"{base_mib:,.0f} base",
            f"+{adapter_mib * n_adapters:,.0f} LoRA",
            f"{n_adapters} x {adapter_mib:.1f} MiB per adapter",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
