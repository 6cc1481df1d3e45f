"""The three grammar libraries behind one interface, for benchmarks/structured_overhead.py: `compile(kind,
spec)` (kind: "schema", "object" or "choice") and `matcher(compiled) -> (fill(bitmask), accept(token))`,
each configured for the same JSON layout as the engine (one line, ", " and ": ")."""

import json

import llguidance
import llguidance.hf
import llguidance.torch as lgt
import outlines_core as oc
import xgrammar as xgr


class XGrammar:
    name = "xgrammar 0.2.8"

    def __init__(self, tok, vocab, stops):
        self.info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab, stop_token_ids=stops)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)

    def compile(self, kind, spec):
        if kind == "choice":
            alts = " | ".join(json.dumps(c) for c in spec)
            return self.compiler.compile_grammar(f"root ::= {alts}")
        schema = {"type": "object"} if kind == "object" else spec
        return self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, strict_mode=kind == "schema"
        )

    def matcher(self, compiled):
        m = xgr.GrammarMatcher(compiled)
        return (lambda bm: m.fill_next_token_bitmask(bm, 0)), m.accept_token


class LLGuidance:
    name = "llguidance 1.9.1"
    DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

    def __init__(self, tok, vocab, stops):
        self.tok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab, eos_token=stops)

    def compile(self, kind, spec):
        if kind == "choice":
            return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec))
        schema = {"type": "object"} if kind == "object" else spec
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=self.DEFAULTS)
        llguidance.LLMatcher(self.tok, grammar)  # builds its lexer: the part of compiling done up front
        return grammar

    def matcher(self, grammar):
        m = llguidance.LLMatcher(self.tok, grammar)
        return (lambda bm: lgt.fill_next_token_bitmask(m, bm, 0)), m.consume_token


class OutlinesCore:
    name = "outlines-core 0.2.14"

    def __init__(self, tok, vocab, stops):
        unicode_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
        tokens: dict[bytes, list[int]] = {}
        special = set(tok.all_special_ids)
        for text, i in tok.get_vocab().items():
            if i not in special and i < vocab and all(c in unicode_to_byte for c in text):
                tokens.setdefault(bytes(unicode_to_byte[c] for c in text), []).append(i)
        self.eos = stops[0]
        self.vocab = oc.Vocabulary(self.eos, tokens)

    def compile(self, kind, spec):
        if kind == "object":
            return None  # a regex cannot describe nested JSON of any depth
        if kind == "choice":
            regex = "(" + "|".join(_escape(c) for c in spec) + ")"
        else:
            regex = oc.json_schema.build_regex_from_schema(json.dumps(spec), whitespace_pattern=" ?")
        return oc.Index(regex, self.vocab)

    def matcher(self, index):
        guide = oc.Guide(index)

        def accept(token):
            if token != self.eos:
                guide.advance(token, return_tokens=False)
            return True

        return (lambda bm: guide.write_mask_into(bm.data_ptr(), bm.numel(), 4)), accept


def _escape(text: str) -> str:
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\/" else c for c in text)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table of byte-level BPE vocabularies."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))
