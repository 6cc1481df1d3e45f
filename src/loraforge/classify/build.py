"""Build or find the label index of each adapter a classification config evaluates."""

from collections.abc import Callable
from pathlib import Path

from loraforge.classify.label_index import LabelIndex
from loraforge.config.schema import FineTuneConfig
from loraforge.data.examples import ExampleBuilder
from loraforge.data.labels import load_labels
from loraforge.errors import ConfigError
from loraforge.evaluate.engine_backend import EngineBackend


def build_label_index(
    config: FineTuneConfig, generator: EngineBackend, adapter: str | None, records: list[dict]
) -> LabelIndex:
    """The index of `records` (the adapter's training rows) under `adapter`: each row prompted as the config
    says, its answer state from the engine, its target as the label."""
    builder = ExampleBuilder(config.prompt, config.target, generator.tokenizer)
    examples = [builder.build(record) for record in records]
    states = generator.answer_states([example.prompt for example in examples], adapter)
    labels = load_labels(config.evaluation.labels)
    return LabelIndex.build(states, [example.completion for example in examples], labels)


def adapter_indexes(
    config: FineTuneConfig,
    generator: EngineBackend,
    adapters: dict[str, Path],
    records: list[dict],
    on_build: Callable[[Path], None] | None = None,
) -> dict[str, LabelIndex]:
    """Each adapter's index (by the generator's name for it): the one in its folder, or for an adapter
    trained without one, built here from `records` (the config's training split) and not written; `on_build`
    hears of each such folder first."""
    labels = load_labels(config.evaluation.labels)
    indexes = {}
    for name, folder in adapters.items():
        index = LabelIndex.load(folder)
        if index is not None:
            try:
                index.check_fits(generator.hidden_size, labels, "evaluation.labels")
            except ConfigError as exc:
                raise ConfigError(f"adapter {folder}: {exc}") from None
        if index is None:
            if on_build is not None:
                on_build(folder)
            index = build_label_index(config, generator, name, records)
        indexes[name] = index
    return indexes
