"""Evaluation through the serving engine: every prompt of every run (base model, one or more adapters) goes
into one continuous batch, instead of HF `generate`'s padded batches run one model at a time.

Same greedy decoding and the same label constraint as the HF backend (`inference/hf.py`), so both
give the same outputs where their arithmetic agrees (fp32; `tests/evaluate/test_engine_backend.py`); bf16
matmuls may round differently between the two. `benchmarks/eval_throughput.py` measures the speed-up.

What makes it fast, besides continuous batching: one adapter evaluated alone is merged into the base weights
(no LoRA work per token); the KV cache's blocks are small, so the prefix cache shares the chat template's
start, which is a block of 16 tokens or less; a label is complete as soon as its first tokens name it
(engine.py: `_take_decided`).
"""

import math
from collections.abc import Callable
from pathlib import Path

from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from loraforge.serve.engine.constraints import ChoiceConstraint

BASE = None  # the run without an adapter
# KV-cache block size: the prefix cache shares whole blocks, and an init config's shared start (system prompt
# and the template up to the input) is ~14 tokens: 12 of them shared in blocks of 4, none in blocks of 16.
BLOCK_SIZE = 4


class EngineBackend:
    """Greedy generation for evaluation on an `Engine`; adapters are registered by name."""

    def __init__(self, engine: Engine, merged: str | None = None) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.merged = merged  # the adapter merged into the engine's base weights, if any

    @classmethod
    def load(
        cls,
        spec: str,
        adapters: dict[str, Path],
        precision: str = "auto",
        device: str = "cpu",
        merge: bool = False,
    ) -> "EngineBackend":
        """An engine holding `adapters` by name; with `merge` and one adapter, that adapter is merged into
        the base weights instead (the base model itself can then not be evaluated)."""
        config = EngineConfig(model=spec, precision=precision, device=device, block_size=BLOCK_SIZE)
        if merge and len(adapters) == 1:
            ((name, path),) = adapters.items()
            config.merged_adapter = path
            return cls(Engine(config), merged=name)
        engine = Engine(config)
        for name, path in adapters.items():
            engine.adapters.register(name, path)
        return cls(engine)

    def generate_runs(
        self,
        prompts: list[str],
        adapters: list[str | None],
        max_new_tokens: int = 64,
        on_done: Callable[[int], None] | None = None,
        allowed_outputs: list[str] | None = None,
        batch_size: int | None = None,
    ) -> dict[str | None, list[str]]:
        """Completions of `prompts` (already templated) for each adapter name (None: the base model), all in
        one batch stream; special tokens removed and whitespace stripped, as the HF backend does.
        `batch_size` is the HF backend's padded batch; the engine batches continuously and needs none."""
        runs = self._runs(prompts, adapters, max_new_tokens, on_done, allowed_outputs, with_logprobs=False)
        return {adapter: [text for text, _ in outputs] for adapter, outputs in runs.items()}

    def classify_runs(
        self,
        prompts: list[str],
        adapters: list[str | None],
        labels: list[str],
        max_new_tokens: int,
        on_done: Callable[[int], None] | None = None,
    ) -> dict[str | None, list[tuple[str, float]]]:
        """As `generate_runs` constrained to `labels`, each output with the probability the model gave it:
        the product of its tokens' probabilities, each renormalized over the tokens the label set allowed
        there (what the constraint let the model choose from; model/logprobs.py)."""
        return self._runs(prompts, adapters, max_new_tokens, on_done, labels, with_logprobs=True)

    def _runs(self, prompts, adapters, max_new_tokens, on_done, allowed_outputs, *, with_logprobs: bool):
        if self.merged is not None and BASE in adapters:
            raise ValueError("this engine holds its adapter merged into the base: the base model is gone")
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        constraint = (
            ChoiceConstraint.from_strings(allowed_outputs, self.tokenizer) if allowed_outputs else None
        )
        params = [
            SamplingParams(
                max_tokens=max_new_tokens,
                temperature=0.0,
                constraint=constraint,
                logprobs=0 if with_logprobs else None,
            )
            for _ in adapters
            for _ in encoded
        ]
        names = [None if adapter == self.merged else adapter for adapter in adapters for _ in encoded]
        seqs = self.engine.generate(
            encoded * len(adapters), params, names, on_finish=(lambda _: on_done(1)) if on_done else None
        )
        failed = next((s.error for s in seqs if s.error is not None), None)
        if failed is not None:  # an adapter that did not load: no partial report
            raise failed
        outputs = [
            (
                self.tokenizer.decode(s.output_ids, skip_special_tokens=True).strip(),
                math.exp(sum(entry.logprob for entry in s.logprobs)) if with_logprobs else 1.0,
            )
            for s in seqs
        ]
        return {
            adapter: outputs[i * len(encoded) : (i + 1) * len(encoded)] for i, adapter in enumerate(adapters)
        }
