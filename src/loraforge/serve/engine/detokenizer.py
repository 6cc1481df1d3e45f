"""Incremental detokenization: text deltas from a growing list of token ids, cheap per step, and the part of
the text that is final enough to hand out."""

from loraforge.serve.engine.sequence import Sequence


class Detokenizer:
    """Decodes only a short window per step (vLLM's prefix/read offsets), holding back incomplete UTF-8."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def step(self, seq: Sequence) -> str:
        """Append the text of the newest token(s) to `seq.output_text` and return the delta."""
        ids = seq.output_ids
        prefix_off, read_off = seq.detok_offsets
        decode = self.tokenizer.decode
        prefix = decode(ids[prefix_off:read_off], skip_special_tokens=True)
        full = decode(ids[prefix_off:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            seq.detok_offsets = (read_off, len(ids))
            seq.output_text += delta
            return delta
        return ""


def take_new_text(seq: Sequence) -> str:
    """The text of `seq` not handed out yet that is final, marked as handed out. Until the sequence finishes,
    a tail that could still be the beginning of a stop string is held back (the engine cuts the text at a
    stop string once one is complete, and that part must never have been sent)."""
    text = seq.output_text
    if not seq.is_finished and seq.params.stop:
        text = text[: max(seq.text_sent, len(text) - max(len(s) for s in seq.params.stop) + 1)]
    new, seq.text_sent = text[seq.text_sent :], len(text)
    return new
