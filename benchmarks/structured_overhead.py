"""Structured output: the cost of constraining decoding, per grammar library, on SmolLM2's 49k vocabulary.

Why the engine uses xgrammar (serve/engine/grammar.py) and its own label trie for `guided_choice`
(serve/engine/constraints.py). Same run, same tokenizer, same token sequences for every library:

1. Mask time per token: each library's matcher replays the tokens of valid answers (JSON documents for a
   JSON schema and for "any JSON object"; Banking77's 77 labels for a choice), computing the allowed-token
   bitmask before each token; then the mask is applied to a bf16 logits row. Also the one-time setup (the
   tokenizer's analysis) and the first compile of each grammar.
2. End to end: the engine on SmolLM2, greedy, constrained by each library (plugged in through the engine's
   `Constraint` protocol) vs unconstrained, at batch 1 and 8: tokens/s and the ratio.

    .venv/bin/python benchmarks/structured_overhead.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/structured_overhead.py --skip-e2e
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import xgrammar as xgr

from loraforge.hardware import describe
from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from loraforge.serve.engine.constraints import ChoiceConstraint
from loraforge.serve.engine.grammar import Grammars

sys.path.insert(0, str(Path(__file__).parent))
from grammar_libs import LLGuidance, OutlinesCore, XGrammar  # noqa: E402  (the libraries, one interface)

LABELS = Path("/work/shared/data/banking77/labels.json")
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["admin", "user", "guest"]}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "tags", "address", "active"],
    "additionalProperties": False,
}
DOCS = [
    {"name": "Ada Lovelace", "age": 36, "email": "ada@example.com", "tags": ["admin", "user"],
     "address": {"city": "London", "zip": "W1 2AB"}, "active": True},
    {"name": "Grace Hopper", "age": 85, "email": "grace@navy.mil", "tags": ["guest"],
     "address": {"city": "Arlington", "zip": "22201"}, "active": False},
    {"name": "Alan Turing", "age": 41, "email": "alan@bletchley.uk", "tags": [],
     "address": {"city": "Wilmslow", "zip": "SK9 1AA"}, "active": True},
]  # fmt: skip
PROMPT = "Describe a new user account as JSON with name, age, email, tags, address (city, zip) and active."


def _stats(seconds: list[float]) -> tuple[float, float]:
    """(median, p99) in microseconds: medians, because a shared machine's pauses swamp means."""
    xs = sorted(seconds)
    return statistics.median(xs) * 1e6, xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e6


def mask_times(engine: Engine, rounds: int) -> dict:
    """Per library and workload: setup s, compile ms, fill us/token (mean, p99), apply us/token."""
    tok, vocab, stops = engine.tokenizer, engine.vocab_size, sorted(engine.eos_ids)
    labels = json.loads(LABELS.read_text())
    eos = tok.eos_token_id
    docs = [tok(json.dumps(d), add_special_tokens=False).input_ids + [eos] for d in DOCS]
    choice_seqs = [tok(lb, add_special_tokens=False).input_ids + [eos] for lb in labels]
    work = {"schema": (SCHEMA, docs), "object": (None, docs), "choice": (labels, choice_seqs)}
    logits = torch.randn(1, vocab, dtype=torch.bfloat16)
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    apply = [0.0]
    results: dict = {}
    for lib_cls in (XGrammar, LLGuidance, OutlinesCore):
        t = time.perf_counter()
        lib = lib_cls(tok, vocab, stops)
        setup = time.perf_counter() - t
        for kind, (spec, seqs) in work.items():
            t = time.perf_counter()
            compiled = lib.compile(kind, spec)
            compile_ms = (time.perf_counter() - t) * 1e3
            if compiled is None:
                results[lib.name, kind] = None
                continue
            fills = []
            for _ in range(rounds):
                for ids in seqs:
                    fill, accept = lib.matcher(compiled)
                    for token in ids:
                        t = time.perf_counter()
                        fill(bitmask)
                        fills.append(time.perf_counter() - t)
                        assert accept(token), (lib.name, kind, token)
            results[lib.name, kind] = (setup, compile_ms, *_stats(fills))
    for _ in range(200):
        t = time.perf_counter()
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab)
        apply.append(time.perf_counter() - t)
    t = time.perf_counter()
    trie = ChoiceConstraint.from_strings(labels, tok)
    trie_build = (time.perf_counter() - t) * 1e3
    # The whole mask step for a choice: the trie masks by index; a grammar fills a bitmask, then applies it.
    lib = XGrammar(tok, vocab, stops)
    compiled = lib.compile("choice", labels)
    fills, steps = {"trie": [], "xgrammar": []}, {"trie": [], "xgrammar": []}
    for _ in range(rounds):
        for ids in choice_seqs:
            fill, accept = lib.matcher(compiled)
            for i, token in enumerate(ids):
                t = time.perf_counter()
                trie.allowed(ids[:i])
                fills["trie"].append(time.perf_counter() - t)
                trie.mask(logits, 0, ids[:i])
                steps["trie"].append(time.perf_counter() - t)
                t = time.perf_counter()
                fill(bitmask)
                fills["xgrammar"].append(time.perf_counter() - t)
                xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab)
                steps["xgrammar"].append(time.perf_counter() - t)
                accept(token)
    results["trie (ours)", "choice"] = (0.0, trie_build, *_stats(fills["trie"]))
    step_us = {name: _stats(times)[0] for name, times in steps.items()}
    return {"rows": results, "apply_us": _stats(apply[1:])[0], "choice_step_us": step_us}


# ---- end to end: the engine, with each library plugged in as a Constraint ------------------------------
class _LibState:
    def __init__(self, lib, compiled, vocab):
        self.fill, self.accept = lib.matcher(compiled)
        self.bitmask, self.vocab, self.consumed = xgr.allocate_token_bitmask(1, vocab), vocab, 0

    def mask(self, logits, row, generated):
        for token in generated[self.consumed :]:
            assert self.accept(token)
        self.consumed = len(generated)
        self.fill(self.bitmask)
        xgr.apply_token_bitmask_inplace(logits[row : row + 1], self.bitmask, vocab_size=self.vocab)


class _LibConstraint:
    def __init__(self, lib, compiled, vocab):
        self.lib, self.compiled, self.vocab = lib, compiled, vocab

    def start(self):
        return _LibState(self.lib, self.compiled, self.vocab)


def end_to_end(engine: Engine, rounds: int, max_tokens: int) -> list[tuple[str, int, float, int]]:
    tok = engine.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    prompt = tok(text, add_special_tokens=False).input_ids
    vocab, stops = engine.vocab_size, sorted(engine.eos_ids)
    # The unconstrained rows generate as many tokens as the engine's constrained answer (ignore_eos).
    constraints = {
        "engine (xgrammar)": Grammars(tok, vocab, stops).json_schema(SCHEMA),
        "unconstrained": None,
    }
    for lib_cls in (LLGuidance, OutlinesCore):
        lib = lib_cls(tok, vocab, stops)
        constraints[lib.name] = _LibConstraint(lib, lib.compile("schema", SCHEMA), vocab)
    rows = []
    for batch in (1, 8):
        length = max_tokens
        for name, constraint in constraints.items():
            params = SamplingParams(max_tokens=length, temperature=0, constraint=constraint)
            params.ignore_eos = constraint is None
            engine.generate([prompt], params)  # warm-up (and the compile of a first use)
            best, tokens = float("inf"), 0
            for _ in range(rounds):
                t = time.perf_counter()
                seqs = engine.generate([prompt] * batch, params)
                best = min(best, time.perf_counter() - t)
                tokens = sum(len(s.output_ids) for s in seqs)
            length = len(seqs[0].output_ids) if name.startswith("engine") else length
            rows.append((name, batch, tokens / best, tokens))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {describe()}", flush=True)
    engine = Engine(EngineConfig(model=args.model, num_threads=args.threads))
    print(f"model {engine.model_name}, vocabulary {engine.vocab_size}, {engine.dtype}\n", flush=True)
    m = mask_times(engine, args.rounds)
    rows = m["rows"]
    print("## Mask time per token (fill the allowed-token bitmask; apply it to a logits row separately)\n")
    print(
        f"apply (bitmask -> bf16 logits row, xgrammar's CPU kernel, every library): {m['apply_us']:.1f} us\n"
    )
    print("| workload | library | setup s | first compile ms | fill us/token median | p99 | vs best |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("schema", "object", "choice"):
        mine = {lib: r for (lib, k), r in rows.items() if k == kind}
        best = min(r[2] for r in mine.values() if r is not None)
        for lib, r in mine.items():
            if r is None:
                print(f"| {kind} | {lib} | - | - | cannot express it | - | - |")
                continue
            setup, comp, mean, p99 = r
            print(
                f"| {kind} | {lib} | {setup:.2f} | {comp:.1f} | {mean:.1f} | {p99:.1f} | {mean / best:.2f}x |"
            )
    step = m["choice_step_us"]
    print(
        f"\nchoice, whole mask step (fill + apply) median: trie {step['trie']:.1f} us, xgrammar "
        f"{step['xgrammar']:.1f} us ({step['xgrammar'] / step['trie']:.1f}x the trie)\n",
        flush=True,
    )
    if args.skip_e2e:
        return
    print(
        f"## End to end: engine, greedy, JSON schema, up to {args.max_tokens} tokens, best of {args.rounds}\n"
    )
    e2e = end_to_end(engine, args.rounds, args.max_tokens)
    print("| constraint | batch | tokens | tokens/s | vs unconstrained |\n|---|---|---|---|---|")
    base = {b: tps for name, b, tps, _ in e2e if name == "unconstrained"}
    for name, batch, tps, tokens in e2e:
        print(f"| {name} | {batch} | {tokens} | {tps:.1f} | {tps / base[batch]:.3f}x |")


if __name__ == "__main__":
    main()
