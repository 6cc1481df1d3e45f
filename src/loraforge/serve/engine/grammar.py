"""Grammar-constrained decoding (structured output) with xgrammar, on CPU.

`Grammars` compiles JSON schemas, "any JSON object" and regular expressions into grammars over one
tokenizer's vocabulary; a `GrammarConstraint` is one compiled grammar, shared by every request that asks for
it; each sequence decodes with its own `GrammarState` (an xgrammar matcher), which masks its logits row with
the tokens the grammar allows next. xgrammar was picked over llguidance and outlines-core for its time per
token (and outlines-core cannot express arbitrary JSON): `benchmarks/structured_overhead.py` measures them.

Compiled grammars are cached by xgrammar's compiler, keyed by the grammar's text and bounded in bytes, so a
schema sent again costs nothing; the first compile of a schema runs wherever `compile_*` is called (the API
calls it in the thread pool, never on the event loop)."""

import json
import re
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import xgrammar as xgr

# Bound on the compiled grammars kept (xgrammar's cache; a compiled JSON schema over a 49k vocabulary is
# tens to hundreds of KiB).
GRAMMAR_CACHE_BYTES = 64 << 20
# JSON-schema keywords a grammar cannot enforce in general; xgrammar would silently ignore them, so the
# output could break the schema. Refused, as OpenAI's strict mode refuses them.
UNSUPPORTED_KEYWORDS = frozenset(
    {"not", "if", "then", "else", "dependentSchemas", "dependentRequired", "uniqueItems", "contains"}
)
MAX_SCHEMA_DEPTH = 48  # nesting of objects/arrays in a schema; deeper ones are refused (recursion in checks)
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "additionalProperties", "propertyNames", "unevaluatedProperties")
# xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:123: " (and sometimes a failed check).
_NATIVE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? is false: )?")


class GrammarError(ValueError):
    """A schema or regular expression that cannot be used to constrain decoding; the message says why."""


def _native_message(exc: Exception) -> str:
    return _NATIVE_PREFIX.sub("", str(exc).strip()).split("\n")[0]


def nesting_depth(value: Any) -> int:
    """How deeply JSON objects and arrays nest in `value` (iterative: safe on any depth)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack += [(v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def unsupported_keyword(schema: Any, path: str = "") -> str | None:
    """Where (a JSON-pointer-like path) the first keyword of `UNSUPPORTED_KEYWORDS` sits in `schema`."""
    if not isinstance(schema, dict):
        return None
    for key in schema:
        if key in UNSUPPORTED_KEYWORDS:
            return f"{path}/{key}"
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
        return f"{path}/$ref"  # only references inside the schema: nothing is fetched
    children: list[tuple[str, Any]] = []
    for key in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            children += [(f"{key}/{name}", sub) for name, sub in schema[key].items()]
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            children += [(f"{key}/{i}", sub) for i, sub in enumerate(schema[key])]
    children += [(key, schema[key]) for key in _SUBSCHEMA_ONE if key in schema]
    for where, sub in children:
        found = unsupported_keyword(sub, f"{path}/{where}")
        if found is not None:
            return found
    return None


def no_control_bitmask(info: xgr.TokenizerInfo) -> torch.Tensor:
    """A token bitmask `[1, ceil(vocab / 32)]` without the tokens that hold a raw control character (bytes
    0x00-0x1f). xgrammar's JSON strings accept them, but JSON requires them escaped (`json.loads` refuses
    them); our JSON has no whitespace outside strings, so no such token is ever valid JSON."""
    vocab = info.vocab_size
    bits = np.full((vocab + 31) // 32, 0xFFFFFFFF, dtype=np.uint32)
    for i, token in enumerate(info.decoded_vocab[:vocab]):
        if any(b < 0x20 for b in bytes(token)):
            bits[i // 32] &= ~np.uint32(1 << (i % 32))
    return torch.from_numpy(bits.view(np.int32).copy())[None]


class GrammarState:
    """One sequence's position in a grammar. It catches up with the tokens generated since it was last
    asked, so it needs no hook in the engine loop, and survives preemption (the tokens are kept)."""

    def __init__(self, grammar: "GrammarConstraint") -> None:
        self.matcher = xgr.GrammarMatcher(grammar.compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, grammar.vocab_size)
        self.vocab_size = grammar.vocab_size
        self.stop_ids = grammar.stop_ids
        self.also_allowed = grammar.also_allowed
        self.consumed = 0

    def mask(self, logits: torch.Tensor, row: int, generated: list[int]) -> None:
        """Set `logits[row, t]` to -inf for every token `t` the grammar does not allow after `generated`;
        once the grammar is complete only the end of sequence is allowed."""
        for token in generated[self.consumed :]:
            if not self.matcher.accept_token(token):
                raise RuntimeError(f"token {token} breaks the grammar (a masked logit was sampled)")
        self.consumed = len(generated)
        if not self.matcher.is_terminated():
            self.matcher.fill_next_token_bitmask(self.bitmask, 0)
            if self.also_allowed is not None:
                self.bitmask &= self.also_allowed
        # Done (an end token was accepted and the sequence went on: ignore_eos), or a dead end the grammar
        # cannot leave (a pattern that matches nothing): only the end of sequence, never an error.
        if self.matcher.is_terminated() or not self.bitmask.any():
            kept = logits[row, self.stop_ids]
            logits[row] = float("-inf")
            logits[row, self.stop_ids] = kept
            return
        xgr.apply_token_bitmask_inplace(logits[row : row + 1], self.bitmask, vocab_size=self.vocab_size)

    def decided(self, generated: list[int]) -> list[int]:
        """Always empty: a grammar's forced runs are text (xgrammar's jump-forward), which may tokenize
        otherwise than the model would spell it, and seldom reach the grammar's end."""
        return []


class GrammarConstraint:
    """A compiled grammar: immutable, shared by the requests that use it; `start()` gives one sequence's
    state (the `Constraint` protocol of constraints.py)."""

    def __init__(
        self,
        compiled: xgr.CompiledGrammar,
        vocab_size: int,
        stop_ids: list[int],
        also_allowed: torch.Tensor | None = None,
    ) -> None:
        self.compiled, self.vocab_size, self.stop_ids = compiled, vocab_size, stop_ids
        self.also_allowed = also_allowed  # a bitmask the grammar's is narrowed by (no_control_bitmask)

    def start(self) -> GrammarState:
        return GrammarState(self)


class Grammars:
    """Compiles grammars for one tokenizer and model vocabulary. The tokenizer's analysis (~0.3-0.5 s for a
    49k vocabulary) happens on first use, so a server that never constrains never pays for it. Thread-safe;
    `compile_*` may take milliseconds to a second for a large schema: call them off the event loop."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: Iterable[int], threads: int = 1) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = sorted(set(stop_ids))
        self.threads = threads
        self._compiler: xgr.GrammarCompiler | None = None
        self._json_tokens: torch.Tensor | None = None  # no_control_bitmask
        self._lock = threading.Lock()

    @property
    def compiler(self) -> xgr.GrammarCompiler:
        with self._lock:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids
                )
                self._json_tokens = no_control_bitmask(info)
                self._compiler = xgr.GrammarCompiler(
                    info, max_threads=self.threads, cache_limit_bytes=GRAMMAR_CACHE_BYTES
                )
            return self._compiler

    def _constraint(self, compiled: xgr.CompiledGrammar, is_json: bool = False) -> GrammarConstraint:
        return GrammarConstraint(
            compiled, self.vocab_size, self.stop_ids, self._json_tokens if is_json else None
        )

    def json_schema(self, schema: dict | bool, strict: bool = True) -> GrammarConstraint:
        """Output that validates against `schema`, on one line (", " and ": " between items, no other
        whitespace: small models otherwise fill the answer with blank lines). `strict`: properties the
        schema does not name are refused even where it does not say `additionalProperties: false`."""
        from jsonschema import Draft202012Validator, SchemaError

        if not isinstance(schema, dict | bool):
            raise GrammarError("a JSON schema must be an object")
        if nesting_depth(schema) > MAX_SCHEMA_DEPTH:
            raise GrammarError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        try:
            # Always the draft OpenAI documents (its `$schema` would pick another, or fail on a bad one).
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise GrammarError(f"invalid JSON schema at '/{where}': {exc.message}") from None
        found = unsupported_keyword(schema)
        if found is not None:
            raise GrammarError(f"the keyword at '{found}' is not supported by guided decoding")
        try:
            compiled = self.compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, strict_mode=strict
            )
        except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's C++ errors arrive as RuntimeError
            raise GrammarError(f"unsupported JSON schema: {_native_message(exc)}") from None
        return self._constraint(compiled, is_json=True)

    def json_object(self) -> GrammarConstraint:
        """Any JSON object (OpenAI's `json_object` mode), on one line."""
        return self.json_schema({"type": "object"}, strict=False)

    def regex(self, pattern: str) -> GrammarConstraint:
        """Output that matches `pattern` in full."""
        try:
            return self._constraint(self.compiler.compile_regex(pattern))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise GrammarError(f"invalid regular expression: {_native_message(exc)}") from None
