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
from dataclasses import dataclass
from pathlib import Path

import torch

from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from loraforge.serve.engine.constraints import ChoiceConstraint
from loraforge.serve.engine.sequence import Sequence

BASE = None  # the run without an adapter


@dataclass(frozen=True)
class Classified:
    """A label decoded under the label constraint, the probability the model gave it, and (when asked) the
    answer state it was predicted from."""

    label: str
    probability: float
    state: torch.Tensor | None = None


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

    @property
    def hidden_size(self) -> int:
        """The size of the model's answer states (`answer_states`)."""
        return self.engine.model.cfg.hidden_size

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
        constraint = self._choice(allowed_outputs)
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, constraint=constraint)
        runs = self._runs(prompts, adapters, params, on_done)
        return {adapter: [self._text(s) for s in seqs] for adapter, seqs in runs.items()}

    def classify_runs(
        self,
        prompts: list[str],
        adapters: list[str | None],
        labels: list[str],
        max_new_tokens: int,
        on_done: Callable[[int], None] | None = None,
        *,
        with_states: bool = False,
    ) -> dict[str | None, list[Classified]]:
        """As `generate_runs` constrained to `labels`, each output with the probability the model gave it:
        the product of its tokens' probabilities, each renormalized over the tokens the label set allowed
        there (what the constraint let the model choose from; model/logprobs.py); `with_states`: and the
        answer state a label index compares (classify/label_index.py)."""
        params = SamplingParams(
            max_tokens=max_new_tokens,
            temperature=0.0,
            constraint=self._choice(labels),
            logprobs=0,
            answer_state=with_states,
        )
        runs = self._runs(prompts, adapters, params, on_done)
        return {
            adapter: [
                Classified(self._text(s), math.exp(sum(e.logprob for e in s.logprobs)), s.answer_state)
                for s in seqs
            ]
            for adapter, seqs in runs.items()
        }

    def answer_states(self, prompts: list[str], adapter: str | None) -> torch.Tensor:
        """`[prompts, hidden]`: the state each prompt's first output token is predicted from (one prefill
        each, nothing decoded): what a label index holds for its training rows."""
        params = SamplingParams(max_tokens=1, temperature=0.0, answer_state=True)
        (seqs,) = self._runs(prompts, [adapter], params, None).values()
        return torch.stack([s.answer_state for s in seqs])

    def _choice(self, allowed: list[str] | None) -> ChoiceConstraint | None:
        return ChoiceConstraint.from_strings(allowed, self.tokenizer) if allowed else None

    def _text(self, seq: Sequence) -> str:
        return self.tokenizer.decode(seq.output_ids, skip_special_tokens=True).strip()

    def _runs(
        self,
        prompts: list[str],
        adapters: list[str | None],
        params: SamplingParams,
        on_done: Callable[[int], None] | None,
    ) -> dict[str | None, list[Sequence]]:
        """Every prompt under every adapter in one `Engine.generate`; the finished sequences by adapter."""
        if self.merged is not None and BASE in adapters:
            raise ValueError("this engine holds its adapter merged into the base: the base model is gone")
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        names = [None if adapter == self.merged else adapter for adapter in adapters for _ in encoded]
        seqs = self.engine.generate(
            encoded * len(adapters),
            params,  # copied per request: the engine fits max_tokens to each prompt
            names,
            on_finish=(lambda _: on_done(1)) if on_done else None,
        )
        failed = next((s.error for s in seqs if s.error is not None), None)
        if failed is not None:  # an adapter that did not load: no partial report
            raise failed
        return {
            adapter: seqs[i * len(encoded) : (i + 1) * len(encoded)] for i, adapter in enumerate(adapters)
        }
