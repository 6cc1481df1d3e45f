"""Decode speed with base weights in fewer bits (`--weights`, serve/model/quant.py), in one run, with ratios:

1. engine on this CPU: bf16 vs int8 vs int4 weights: batch-1 decode tokens/s and 64 concurrent requests,
   and the bytes of weights one decode step reads
2. the AVX2 path, forced (a child process: the kernels built with -march=haswell, torch's and oneDNN's own
   kernels capped at AVX2, fp32 activations: what an AVX2-only CPU such as AMD Zen 3 runs): fp32 weights
   (what `--precision fp32` holds) vs bf16 (what `auto` holds there: model/quant.py) vs int8 vs int4
3. the linear layers of one decode step at 1-64 rows, bf16 activations: the plain bf16 path, our kernel
   (quant_linear) and dequantize + F.linear for int8/int4 (where the kernel stops: ops.QUANT_KERNEL_ROWS),
   and torch's own weight-only int8/int4 CPU ops (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`:
   what torchao's Int8WeightOnlyConfig / Int4WeightOnlyConfig with the CPU layout call), and torchao 0.18's
   Int8WeightOnlyConfig itself where torchao is installed (it is not a dependency)

  .venv/bin/python benchmarks/quant_decode.py            # ~10 minutes on 2 busy cores
  .venv/bin/python benchmarks/quant_decode.py --quick    # fewer tokens and repeats
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from loraforge.hardware import describe

AVX2_ENV = {"LORAFORGE_KERNEL_MARCH": "haswell", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # qkv, o, gate_up, down of SmolLM2-135M
LAYERS, VOCAB = 30, 49152


def prompts(tokenizer, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        msg = f"Question {i}: my card payment was declined at a shop abroad. What should I do next?"
        chat = [{"role": "user", "content": msg}]
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        out.append(tokenizer(text, add_special_tokens=False).input_ids)
    return out


def engine_row(weights: str, precision: str, tokens: int, batch: int, repeats: int) -> dict:
    """Batch-1 decode tokens/s (median of `repeats`) and `batch` concurrent requests' tokens/s."""
    from loraforge.serve.engine import Engine, EngineConfig, SamplingParams

    engine = Engine(EngineConfig(precision=precision, weights=weights))
    ids = prompts(engine.tokenizer, batch)
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    engine.generate(ids[:2], SamplingParams(max_tokens=4, temperature=0))  # warm-up
    rates = []
    for _ in range(repeats):
        seq = engine.add_request(ids[0], params)
        engine.step()  # prefill -> first token
        start = time.perf_counter()
        while engine.has_work():
            engine.step()
        rates.append((len(seq.output_ids) - 1) / (time.perf_counter() - start))
    start = time.perf_counter()
    seqs = engine.generate(ids, SamplingParams(max_tokens=tokens // 2, temperature=0, ignore_eos=True))
    batched = sum(len(s.output_ids) for s in seqs) / (time.perf_counter() - start)
    return {
        "weights": weights,
        "format": engine.model.weight_format,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "batch1": statistics.median(rates),
        "batched": batched,
        "mib": engine.model.decode_read_bytes() / 2**20,
        "kernels": engine.model.ops.name,
    }


def print_engine(title: str, rows: list[dict], batch: int) -> None:
    base = rows[0]
    print(f"\n{title}")
    print(
        f"| weights | held as | activations | MiB/step | batch-1 tok/s | ratio | {batch} req. tok/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['weights']} | {r['format']} | {r['dtype']} | {r['mib']:.0f} | {r['batch1']:.1f} | "
            f"{r['batch1'] / base['batch1']:.2f}x | {r['batched']:.0f} | "
            f"{r['batched'] / base['batched']:.2f}x |"
        )


def best_cpu_ms(fn, repeats: int) -> float:
    """Least CPU time of this thread over `repeats` calls, in ms: on one thread, what the work costs whatever
    else the machine runs (wall time on a shared 2-core machine mostly measures the neighbours)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best * 1000


def kernel_table(repeats: int) -> None:
    """The linear layers of one decode step (30 layers + LM head) per path and row count, in ms."""
    from loraforge.serve.kernels.ops import QUANT_KERNEL_ROWS, ops_for
    from loraforge.serve.model.linear import Linear
    from loraforge.serve.model.quant import quantize

    ops = ops_for("cpu", torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(n, k, generator=g) * 0.02 for n, k in [*SHAPES, (VOCAB, 576)]]
    reps = [LAYERS] * len(SHAPES) + [
        1
    ]  # one layer's weights stand for all 30: the timing reads them 30 times
    plain = [Linear(w.bfloat16(), ops=ops) for w in ws]
    q8 = [quantize(w, "int8") for w in ws]
    q4 = [quantize(w, "int4") for w in ws]
    q4_all = [*q4[:-1], q8[-1]]  # the LM head stays int8 under int4 (quant.py)
    t8 = [torch.round(w / (w.abs().amax(1, keepdim=True) / 127)).to(torch.int8) for w in ws]
    t8s = [(w.abs().amax(1) / 127).bfloat16() for w in ws]
    t4 = []
    for w in ws:  # torch's CPU int4 layout: packed by its own op, bf16 scales and zeros per group of 32
        q = quantize(w, "int4")
        n, k = w.shape
        blocks = q.data.view(n, k // 32, 16)
        unpacked = torch.cat([blocks & 15, blocks >> 4], -1).view(n, k).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpacked, 1)
        scale, low = q.scales[..., 0], q.scales[..., 1]  # ours: s * q + min; torch's: (q - 8) * s + zero
        t4.append((packed, torch.stack([scale, low + 8 * scale], -1).transpose(0, 1).contiguous()))
    ao8 = torchao_int8(ws)

    def run(fn_per_layer, xs):
        def step():
            for i, r in enumerate(reps):
                for _ in range(r):
                    fn_per_layer(i, xs[i])

        return step

    print(
        f"\n3. linear layers of a decode step (CPU ms on one thread; 30 layers + LM head, bf16 activations; "
        f"the engine runs the kernel up to {QUANT_KERNEL_ROWS} rows)"
    )
    print(
        "| rows | bf16 (engine) | int8 kernel | int8 dequant+matmul | torch int8pack | int4 kernel | "
        "int4 dequant+matmul | torch int4pack | torchao int8 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rows in (1, 2, 4, 8, 16, 32, 64):
        x = torch.randn(rows, 1536, generator=g).bfloat16()
        xs = [x[:, : w.shape[1]].contiguous() for w in ws]
        cells = [
            lambda i, x: plain[i](x),
            lambda i, x: ops.quant_linear(x, q8[i]),
            lambda i, x: F.linear(x, ops.dequantize(q8[i], torch.bfloat16)),
            lambda i, x: torch._weight_int8pack_mm(x, t8[i], t8s[i]),
            lambda i, x: ops.quant_linear(x, q4_all[i]),
            lambda i, x: F.linear(x, ops.dequantize(q4_all[i], torch.bfloat16)),
            lambda i, x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, t4[i][0], 32, t4[i][1]),
        ]
        times = [f"{best_cpu_ms(run(c, xs), repeats):.2f}" for c in cells]
        times.append(
            f"{best_cpu_ms(run(lambda i, x: ao8[i](x), xs), repeats):.2f}" if ao8 else "not installed"
        )
        print(f"| {rows} | " + " | ".join(times) + " |")


def torchao_int8(ws: list[torch.Tensor]) -> list | None:
    """torchao's Int8WeightOnlyConfig on bf16 nn.Linear layers of these weights, or None without torchao.
    (Its Int4WeightOnlyConfig has no CPU path in 0.18: the plain layout needs the mslk GPU library, the others
    CUDA/XPU; torch's own `_weight_int4pack_mm_for_cpu` stands for it.)"""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        return None
    layers = []
    for w in ws:
        layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False).bfloat16()
        layer.weight.data.copy_(w)
        quantize_(layer, Int8WeightOnlyConfig())
        layers.append(layer)
    return layers


def child(args) -> None:
    formats = ("fp32", "bf16", "int8", "int4")
    rows = [engine_row(w, "fp32", args.tokens, args.batch, args.repeats) for w in formats]
    print("CHILD " + json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 tokens, 2 repeats")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--skip-avx2", action="store_true", help="leave out section 2")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.tokens, args.repeats = (32, 2) if args.quick else (96, 3)
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    print(describe())
    rows = [engine_row(w, "auto", args.tokens, args.batch, args.repeats) for w in ("bf16", "int8", "int4")]
    print_engine(
        f"1. engine on this CPU (SmolLM2-135M, {args.tokens} new tokens at batch 1)", rows, args.batch
    )
    if not args.skip_avx2:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--threads",
            str(args.threads),
            "--batch",
            str(args.batch),
        ]
        cmd += ["--quick"] if args.quick else []
        out = subprocess.run(cmd, env={**os.environ, **AVX2_ENV}, capture_output=True, text=True, check=True)
        child_rows = json.loads(
            next(line for line in out.stdout.splitlines() if line.startswith("CHILD "))[6:]
        )
        title = "2. forced AVX2 path (kernels -march=haswell, torch/oneDNN capped at AVX2, fp32 activations)"
        print_engine(title, child_rows, args.batch)
    torch.set_num_threads(1)
    kernel_table(5 if args.quick else 10)


if __name__ == "__main__":
    main()
