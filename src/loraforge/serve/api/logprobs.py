"""The engine's `TokenLogprob`s in OpenAI's two shapes: chat's `logprobs.content[]` (token, logprob, bytes,
top_logprobs) and legacy completions' parallel lists (tokens, token_logprobs, top_logprobs, text_offset).

Which distribution the numbers are of is the engine's choice: see serve/model/logprobs.py.
"""

import codecs
import math
from functools import lru_cache

from loraforge.serve.api import responses as r
from loraforge.serve.model.logprobs import TokenLogprob

FLOOR = (
    -9999.0
)  # JSON has no -inf: a token that could not be chosen (top-k/top-p, a ban) gets this, as in vLLM


def _bytes_to_unicode() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): printable bytes stand for themselves, the others are shifted
    past 255. Returns its inverse: character -> byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF = _bytes_to_unicode()


class TokenText:
    """A token id's text and UTF-8 bytes. Byte-level BPE tokens map to their exact bytes (a token may hold
    part of a character: its text is then `bytes:\\xe2\\x80`, OpenAI's spelling); other tokenizers' and
    special tokens' bytes are those of their decoded text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self.added = set(tokenizer.get_added_vocab().values())
        self.of = lru_cache(maxsize=1 << 16)(self._of)

    def _of(self, token: int) -> tuple[str, bytes]:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if self.byte_level and token not in self.added and piece and all(c in _BYTE_OF for c in piece):
            raw = bytes(_BYTE_OF[c] for c in piece)
        else:
            raw = self.tokenizer.decode([token]).encode()
        try:
            return raw.decode("utf-8"), raw
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw


def _lp(value: float) -> float:
    return value if math.isfinite(value) else FLOOR


def chat(entries: list[TokenLogprob], text: TokenText) -> r.ChatLogprobs:
    content = []
    for e in entries:
        token, raw = text.of(e.token)
        top = [r.TopLogprob(token=text.of(t)[0], logprob=_lp(v), bytes=list(text.of(t)[1])) for t, v in e.top]
        content.append(
            r.ChatTokenLogprob(token=token, logprob=_lp(e.logprob), bytes=list(raw), top_logprobs=top)
        )
    return r.ChatLogprobs(content=content)


class CompletionLogprobs:
    """One choice's legacy logprobs, built chunk by chunk (a stream) or at once; `text_offset` counts the
    characters of the choice's text (the echoed prompt included) before each token."""

    def __init__(self, text: TokenText):
        self.text = text
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.offset = 0

    def part(
        self, entries: list[TokenLogprob], first_prompt_token: int | None = None
    ) -> r.CompletionLogprobs:
        """The next positions; `first_prompt_token` (echo) comes first, with null logprobs (as OpenAI)."""
        out = r.CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        if first_prompt_token is not None:
            self._add(out, first_prompt_token, None, None)
        for e in entries:
            top = {self.text.of(t)[0]: _lp(v) for t, v in e.top}
            top.setdefault(
                self.text.of(e.token)[0], _lp(e.logprob)
            )  # OpenAI: the chosen token is always there
            self._add(out, e.token, _lp(e.logprob), top)
        return out

    def _add(self, out: r.CompletionLogprobs, token: int, logprob: float | None, top) -> None:
        piece, raw = self.text.of(token)
        out.tokens.append(piece)
        out.token_logprobs.append(logprob)
        out.top_logprobs.append(top)
        out.text_offset.append(self.offset)
        self.offset += len(self.decoder.decode(raw))
