"""The engine's C++ CPU kernels against the PyTorch code they replace, on SmolLM2-135M shapes, in one run.

  1. LoRA of one decode step: 30 layers x 4 fused projections, 32 adapters x 2 rows, r=16 (lora_add)
     vs the batched matmuls (torch.bmm over the adapters of the batch)
  2. decode attention of one step: 30 layers, 64 sequences, 80-160 cached tokens each, blocks scattered
     over the cache (decode_attention) vs gathering each context and two batched matmuls
  3. every linear layer of one decode step plus the LM head, 1/2/4/64 rows: F.linear vs oneDNN with the
     weights packed at load (linear.packed_linear) vs the matrix-vector kernel (small_linear, <= 4 rows)

Random weights (the kernels' speed does not depend on their values), bf16, best of --repeats alternating
rounds. Each row prints the times, and torch's time divided by each other's.

    .venv/bin/python benchmarks/cpu_kernels.py
"""

import argparse
import time

import torch
import torch.nn.functional as F

from loraforge.hardware import describe
from loraforge.serve.kernels.loader import cpu_kernels
from loraforge.serve.kernels.ops import TORCH_OPS, KernelOps, decode_attention
from loraforge.serve.lora.batch import LoRABatch
from loraforge.serve.lora.weights import LoRAWeights
from loraforge.serve.model.kv_cache import KVCache
from loraforge.serve.model.linear import pack, packed_linear
from loraforge.serve.model.projections import PROJECTIONS

DIMS = {"hidden_size": 576, "q_size": 576, "kv_size": 192, "intermediate_size": 1536}
LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 30, 9, 3, 64, 49152


def best_ms(fns: dict, repeats: int) -> dict[str, float]:
    """Alternate the functions `repeats` times; best wall time of each, in ms."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - start) * 1000)
    return best


def lora_case(kernels, repeats: int) -> dict[str, float]:
    weights = LoRAWeights(DIMS, LAYERS, 33, torch.bfloat16, "cpu", cache_bytes=1 << 30)
    weights.ensure_rank(16, [])
    adapter = {  # one random r=16 all-linear adapter, installed 32 times: as many bytes read as 32 different
        (layer, part.module): (torch.randn(16, DIMS[proj.in_dim]), torch.randn(DIMS[part.out_dim], 16), 1.0)
        for layer in range(LAYERS)
        for proj in PROJECTIONS.values()
        for part in proj.parts
    }
    for index in range(1, 33):
        weights.install(index, adapter)
    batch = LoRABatch.build([index for index in range(1, 33) for _ in range(2)])
    xs = {p: torch.randn(64, DIMS[proj.in_dim]).bfloat16() for p, proj in PROJECTIONS.items()}
    widths = {p: sum(DIMS[d] for _, d in proj.parts) for p, proj in PROJECTIONS.items()}
    outs = {p: torch.zeros(64, widths[p]).bfloat16() for p in PROJECTIONS}

    def run(with_kernels):
        def step():
            weights.ops = KernelOps(kernels) if with_kernels else TORCH_OPS
            for layer in range(LAYERS):
                for p in PROJECTIONS:
                    weights.add(layer, p, xs[p], outs[p], batch)

        return step

    run(False)()  # the batched-matmul path's copy of the batch's adapters is made once, outside the timing
    return best_ms({"torch": run(False), "kernel": run(True)}, repeats)


def attention_case(kernels, repeats: int) -> dict[str, float]:
    block_size, num_blocks, batch = 16, 1024, 64
    kv = KVCache(LAYERS, num_blocks, block_size, KV_HEADS, HEAD_DIM, torch.bfloat16)
    kv.k.normal_()
    kv.v.normal_()
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(80, 161, (batch,), generator=g)
    blocks = -(-160 // block_size)
    tables = torch.randperm(num_blocks, generator=g)[: batch * blocks].view(batch, blocks)
    q = torch.randn(batch, HEADS, HEAD_DIM).bfloat16()
    mask = (torch.arange(blocks * block_size)[None, :] < lens[:, None])[:, None, None, :]

    def gathered():
        for layer in range(LAYERS):
            kc, vc = kv.gather(layer, tables)
            decode_attention(q, kc, vc, mask)

    def kernel():
        for layer in range(LAYERS):
            kernels.decode_attention(q, kv.k[layer], kv.v[layer], tables, lens, HEAD_DIM**-0.5)

    return best_ms({"torch": gathered, "kernel": kernel}, repeats)


def linear_case(kernels, rows: int, repeats: int) -> dict[str, float]:
    shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * LAYERS + [(VOCAB, 576)]
    weights = [torch.randn(n, k).bfloat16() for n, k in shapes]
    xs = {k: torch.randn(rows, k).bfloat16() for k in (576, 1536)}

    packed = [pack(w) for w in weights]

    def run(linear, ws):
        return lambda: [linear(xs[w.shape[1]], w) for w in ws]

    fns = {"torch": run(F.linear, weights), "packed": run(packed_linear, packed)}
    if rows <= 4:
        fns["kernel"] = run(kernels.small_linear, weights)
    return best_ms(fns, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()
    print(f"CPU: {describe()}", flush=True)
    torch.set_num_threads(args.threads)
    kernels = cpu_kernels()
    if kernels is None:
        raise SystemExit("the CPU kernels could not be built here (no C++ toolchain?)")
    rows = [
        ("1. LoRA, 32 adapters x 2 rows, one step", lora_case(kernels, args.repeats)),
        ("2. decode attention, 64 seqs, one step", attention_case(kernels, args.repeats)),
    ]
    rows += [
        (f"3. linear layers + LM head, {n} row(s)", linear_case(kernels, n, args.repeats))
        for n in (1, 2, 4, 64)
    ]
    print(f"\ncpu_kernels: SmolLM2-135M shapes, bf16, {args.threads} threads, best of {args.repeats}\n")
    width = max(len(name) for name, _ in rows)
    for name, t in rows:
        others = [f"{k} {ms:6.1f} ms ({t['torch'] / ms:.1f}x)" for k, ms in t.items() if k != "torch"]
        print(" | ".join([name.ljust(width), f"torch {t['torch']:6.1f} ms", *others]))


if __name__ == "__main__":
    main()
