"""Incremental detokenization: text deltas from a growing list of token ids, cheap per step."""

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
