"""loraforge vs llama.cpp on this CPU (issue 16), same model, prompts, token counts and threads, one run:

  1. batch-1 decode tokens/s: our engine vs `llama-bench` (tg N at depth = the prompt's length), at equal
     precision (our bf16 vs BF16), at equal bits (int8 vs Q8_0, int4 vs Q4_K_M: `--our-weights`, where the
     engine has `EngineConfig.weights`; "n/a on this build" otherwise) and each side's best   target >= 1.0x
  2. 64 concurrent requests on the base model: `loraforge serve` vs `llama-server`, both over HTTP
  3. 64 concurrent requests over 8 and 32 distinct adapters: our batched multi-LoRA vs llama-server's
     per-request `lora: [{id, scale}]` (all adapters preloaded with `--lora`, none applied by default)
                                                                                              target >= 3x
  4. time to first token (a request with max_tokens=1, one after another) with a shared 500-token prefix and
     a distinct suffix: ours vs llama-server with `cache_prompt` (its prefix reuse) and without

Sizing: llama-server gets one slot per concurrent request (`--parallel N`, continuous batching on, its
default) and one KV pool shared by the slots (`--kv-unified`, like our paged cache) of `-c N x (prompt + new
tokens, rounded up to 256)`, so all N sequences fit at once, as our engine holds all N in its running batch.
`-t` and `-tb` = `--threads` on both sides (ours: `--threads`). Both are driven by the same asyncio client
with token-id prompts, `temperature: 0`, `ignore_eos: true`. llama.cpp is built from the `llama-cpp-python`
sdist (loraforge.export.llamacpp, cached); the GGUFs (the base at each type, the adapters as GGUF LoRA in
bf16) are converted once and cached under $LORAFORGE_HOME/bench/vs_llamacpp/.

llama.cpp's threads meet at a barrier after every operation: when other processes hold the cores, its
multi-thread decode collapses (and ours suffers too), so run it on quiet cores; the load average is printed.

    .venv/bin/python benchmarks/vs_llamacpp.py            # full: 64 requests x 128 tokens (~15 min)
    .venv/bin/python benchmarks/vs_llamacpp.py --quick    # 16 requests x 32 tokens over 4 and 8 adapters
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from http_load import Server, burst, free_port, median_ms, one_by_one
from serve_workload import ALL_LINEAR, PEFT_DEFAULT, engine_batch1_decode, make_adapters, prompts

from loraforge.hardware import describe
from loraforge.paths import loraforge_home

LLAMA_TYPES = {"f32": "F32", "bf16": "BF16", "q8_0": "Q8_0", "q4_k_m": "Q4_K_M"}  # export name -> label
EQUAL_BITS = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0", "int4": "q4_k_m"}  # our weights -> llama's
PREFIX_TOKENS = 500


def engine_has_weights() -> bool:
    """Whether this build's engine takes `EngineConfig(weights=...)` (quantized base weights)."""
    from loraforge.serve.engine import EngineConfig

    return "weights" in {f.name for f in dataclasses.fields(EngineConfig)}


def prepare(args, model, n_adapters: int) -> tuple[dict[str, Path], Path, list[str], list[Path]]:
    """GGUF files of the base per llama type, our PEFT adapters, and the same adapters as GGUF LoRA."""
    from loraforge.export.gguf import export_base_gguf, export_gguf

    cache = loraforge_home() / "bench" / "vs_llamacpp"
    ggufs = {}
    for quant in args.llama_types:
        ggufs[quant] = cache / f"{model.name}-{quant}.gguf"
        if not ggufs[quant].is_file():
            t0 = time.perf_counter()
            export_base_gguf(args.model, ggufs[quant], quant=quant)
            log(f"converted the base to {LLAMA_TYPES[quant]} in {time.perf_counter() - t0:.0f} s")
    shape = f"r{args.rank}-{args.targets}"
    adapter_dir, lora_dir = cache / f"adapters-{shape}", cache / f"lora-{shape}"
    names = [f"lc-{i:03d}" for i in range(n_adapters)]
    if not all((adapter_dir / n / "adapter_model.safetensors").is_file() for n in names):
        targets = ALL_LINEAR if args.targets == "all" else PEFT_DEFAULT
        make_adapters(model.path, adapter_dir, n_adapters, args.rank, targets=targets, prefix="lc")
    loras = []
    for name in names:
        loras.append(lora_dir / f"{name}.gguf")
        if not loras[-1].is_file():
            export_gguf(adapter_dir / name, loras[-1], quant="bf16", lora_only=True, base_model=args.model)
    log(f"{n_adapters} adapters ({shape}) and their GGUF LoRAs ready")
    return ggufs, adapter_dir, names, loras


def ours_batch1(args, weights: str | None, ids: list[int], max_tokens: int) -> float:
    """Our engine's batch-1 decode tokens/s (the best of --repeats), in process like llama-bench."""
    from loraforge.serve.engine import Engine, EngineConfig

    extra = {"weights": weights} if weights else {}
    engine = Engine(EngineConfig(model=args.model, num_threads=args.threads, **extra))
    engine_batch1_decode(engine, ids, 4)  # warm up
    return max(engine_batch1_decode(engine, ids, max_tokens) for _ in range(args.repeats))


def llama_batch1(args, gguf: Path, prompt_len: int, max_tokens: int) -> float:
    """llama-bench's decode tokens/s of `max_tokens` after a prompt of `prompt_len` (the best repetition)."""
    from loraforge.export.llamacpp import tool

    command = [tool("llama-bench"), "-m", gguf, "-p", "0", "-n", max_tokens, "-d", prompt_len]
    command += ["-t", args.threads, "-r", args.repeats, "-o", "json"]
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=True)
    return max(json.loads(done.stdout)[0]["samples_ts"])


def our_server(args, adapter_dir: Path, weights: str | None) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "loraforge", "serve", "--model", args.model, "--port", port]
    command += ["--threads", args.threads, "--adapter-dir", adapter_dir, "--max-adapters", 64]
    command += ["--weights", weights] if weights else []
    return Server(command, port, "loraforge-serve")


def llama_server(args, gguf: Path, slots: int, per_slot: int, loras: list[Path] = ()) -> Server:
    from loraforge.export.llamacpp import tool

    port = free_port()
    command = [tool("llama-server"), "-m", gguf, "--host", "127.0.0.1", "--port", port]
    command += ["-t", args.threads, "-tb", args.threads, "--parallel", slots, "-c", slots * per_slot]
    command += ["--kv-unified", "--no-webui"]  # one KV pool shared by the slots, as our paged cache
    for lora in loras:
        command += ["--lora", lora]
    command += ["--lora-init-without-apply"] if loras else []
    return Server(command, port, "llama-server")


def body(ids: list[int], max_tokens: int, model: str, **extra) -> dict:
    plain = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    return plain | extra


def serve_side(
    server: Server, side: str, base: str, ids, max_tokens, adapter_counts, names, ttft_ids
) -> dict:
    """Rows 2-4 against one running server: `side` "ours" names an adapter in `model`, "llama" in `lora`
    (by its place in the server's --lora list). A llama-server started without adapters runs rows 2 and 4,
    one with adapters row 3; ours runs all."""
    out = {}
    if side == "ours" or not names:
        burst(server.url, [body(i, 2, base) for i in ids])  # warm up
        out["base"] = burst(server.url, [body(i, max_tokens, base) for i in ids])
        for cached in (True, False) if side == "llama" else (None,):
            extra = {} if cached is None else {"cache_prompt": cached}
            one_by_one(server.url, [body(ttft_ids[0], 1, base, **extra)])  # fills a prefix cache, if any
            latencies = one_by_one(server.url, [body(t, 1, base, **extra) for t in ttft_ids[1:]])
            out["ttft" if cached is not False else "ttft_nocache"] = median_ms(latencies)
    if side == "ours" or names:
        for count in adapter_counts:

            def pick(k: int, count: int = count) -> dict:
                if side == "ours":
                    return {"model": names[k % count]}
                return {"lora": [{"id": k % count, "scale": 1.0}]}

            burst(server.url, [body(i, 2, base) | pick(k) for k, i in enumerate(ids)])  # all resident
            out[count] = burst(server.url, [body(i, max_tokens, base) | pick(k) for k, i in enumerate(ids)])
    return out


def ttft_prompts(tok, suffixes: list[list[int]]) -> list[list[int]]:
    """A shared prefix of exactly PREFIX_TOKENS tokens (a long system text), then each suffix."""
    text = " ".join(
        f"Rule {i}: when a customer asks about {topic}, check the account, answer briefly and politely."
        for i, topic in enumerate(["cards", "transfers", "fees", "refunds", "top-ups", "PINs"] * 20)
    )
    prefix = tok(text, add_special_tokens=False).input_ids[:PREFIX_TOKENS]
    assert len(prefix) == PREFIX_TOKENS
    return [prefix + s for s in suffixes]


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 requests x 32 tokens, 4 and 8 adapters")
    ap.add_argument("--threads", type=int, default=2, help="threads of both sides")
    ap.add_argument("--repeats", type=int, default=3, help="batch-1 repetitions per side (best kept)")
    ap.add_argument("--model", default="smollm2-135m", help="alias or local HF directory")
    ap.add_argument("--our-weights", default="bf16,int8,int4", help="our base weights for row 1")
    ap.add_argument("--serve-weights", default="bf16", help="our base weights for rows 2-4")
    ap.add_argument("--llama-types", default="bf16,q8_0,q4_k_m", help=f"of {', '.join(LLAMA_TYPES)}")
    ap.add_argument("--rank", type=int, default=16, help="rank of the adapters of row 3")
    ap.add_argument("--targets", default="all", choices=["all", "qv"], help="all linear, or q/v_proj")
    ap.add_argument("--requests", type=int, help="concurrent requests (default 64, --quick 16)")
    ap.add_argument("--tokens", type=int, help="new tokens per request (default 128, --quick 32)")
    ap.add_argument("--adapters", help="adapter counts of row 3 (default 8,32; --quick 4,8)")
    args = ap.parse_args()
    args.llama_types = args.llama_types.split(",")
    our_weights = args.our_weights.split(",")
    print(f"CPU: {describe()}", flush=True)
    n_req, max_tokens, counts, n_ttft = (16, 32, (4, 8), 4) if args.quick else (64, 128, (8, 32), 8)
    n_req, max_tokens = args.requests or n_req, args.tokens or max_tokens
    counts = tuple(int(c) for c in args.adapters.split(",")) if args.adapters else counts

    from loraforge.export.llamacpp import LLAMA_CPP_PYTHON, tools
    from loraforge.models import load_tokenizer, pick_dtype, resolve_model

    t0 = time.perf_counter()
    tools("llama-server", "llama-bench", "llama-quantize")
    log(f"llama.cpp tools ready in {time.perf_counter() - t0:.0f} s")
    model = resolve_model(args.model)
    tok = load_tokenizer(model)
    ids = prompts(tok, n_req)
    ttft_ids = ttft_prompts(tok, prompts(tok, n_ttft + 1))
    ggufs, adapter_dir, names, loras = prepare(args, model, max(counts))
    native = {"torch.bfloat16": "bf16", "torch.float32": "fp32"}[str(pick_dtype("auto", "cpu"))]
    has_weights = engine_has_weights()

    ours_b1: dict[str, float | None] = {}
    for w in our_weights:
        if has_weights or w == native:
            ours_b1[w] = ours_batch1(args, w if has_weights else None, ids[0], max_tokens)
            log(f"ours {w} batch-1: {ours_b1[w]:.1f} tok/s")
        else:
            ours_b1[w] = None
    llama_b1 = {q: llama_batch1(args, ggufs[q], len(ids[0]), max_tokens) for q in args.llama_types}
    log(f"llama.cpp batch-1: {llama_b1}")

    equal = EQUAL_BITS[args.serve_weights]
    longest = max(len(i) for i in ids + ttft_ids)
    per_slot = -(-(max(max(len(i) for i in ids) + max_tokens, longest + 1)) // 256) * 256
    serve_w = args.serve_weights if has_weights else None
    with our_server(args, adapter_dir, serve_w) as server:
        ours = serve_side(server, "ours", model.name, ids, max_tokens, counts, names, ttft_ids)
    log(f"ours served: {ours}")
    with llama_server(args, ggufs[equal], n_req, per_slot) as server:
        llama = serve_side(server, "llama", model.name, ids, max_tokens, counts, [], ttft_ids)
    with llama_server(args, ggufs[equal], n_req, per_slot, loras) as server:
        llama |= serve_side(server, "llama", model.name, ids, max_tokens, counts, names, ttft_ids)
    log(f"llama.cpp served: {llama}")

    print(
        f"\nvs_llamacpp: {model.name}, {args.threads} threads, llama.cpp from llama-cpp-python"
        f" {LLAMA_CPP_PYTHON}; {n_req} requests x {max_tokens} tokens; adapters r={args.rank}"
        f" {'all-linear' if args.targets == 'all' else 'q/v'} as GGUF LoRA bf16;"
        f" load avg {os.getloadavg()[0]:.1f}\n"
    )
    rows = [("row", "ours", "llama.cpp", "ratio (>1: ours faster)", "target")]
    for w in our_weights:
        q = EQUAL_BITS.get(w)
        if q in llama_b1:
            rows.append(
                tok_s_row(f"1. batch-1 decode tok/s, {w} vs {LLAMA_TYPES[q]}", ours_b1[w], llama_b1[q], 1.0)
            )
    best_w = max((w for w in ours_b1 if ours_b1[w]), key=lambda w: ours_b1[w])
    best_q = max(llama_b1, key=llama_b1.get)
    rows.append(
        tok_s_row(f"1. batch-1, best: {best_w} vs {LLAMA_TYPES[best_q]}", ours_b1[best_w], llama_b1[best_q])
    )
    label = f"{args.serve_weights} vs {LLAMA_TYPES[equal]}"
    rows.append(tok_s_row(f"2. {n_req} concurrent, base, tok/s ({label})", ours["base"], llama["base"]))
    for count in counts:
        rows.append(
            tok_s_row(f"3. {n_req} concurrent, {count} adapters, tok/s", ours[count], llama[count], 3.0)
        )
    rows.append(
        ttft_row(f"4. TTFT ms, {PREFIX_TOKENS}-token shared prefix, cache_prompt", ours, llama["ttft"])
    )
    rows.append(ttft_row("4. TTFT ms, llama-server without cache_prompt", ours, llama["ttft_nocache"]))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def tok_s_row(name: str, ours, theirs, target: float | None = None) -> tuple[str, ...]:
    """One row of tokens/s: plain numbers (row 1) or bursts (their token counts shown, as a check)."""

    def fmt(x) -> str:
        return f"{x['tok_s']:,.0f} ({x['tokens']} tok)" if isinstance(x, dict) else f"{x:,.1f}"

    if ours is None:
        return (name, "n/a on this build", fmt(theirs), "", f">= {target:.1f}x: n/a" if target else "")
    speed = [x["tok_s"] if isinstance(x, dict) else x for x in (ours, theirs)]
    ratio = speed[0] / speed[1]
    verdict = f">= {target:.1f}x: {'met' if ratio >= target else 'MISSED'}" if target else ""
    return (name, fmt(ours), fmt(theirs), f"{ratio:.2f}x", verdict)


def ttft_row(name: str, ours: dict, theirs_ms: float) -> tuple[str, ...]:
    return (name, f"{ours['ttft']:,.0f}", f"{theirs_ms:,.0f}", f"{theirs_ms / ours['ttft']:.2f}x", "")


if __name__ == "__main__":
    main()
