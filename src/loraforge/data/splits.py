"""Load the train/validation/test records a config names, with seeded sampling and validation carving."""

import random
from collections import defaultdict
from dataclasses import dataclass

from loraforge.config.schema import DataConfig
from loraforge.data.sources import read_records
from loraforge.errors import DataError


@dataclass
class Splits:
    train: list[dict]
    validation: list[dict]
    test: list[dict]


def _groups(records: list[dict], column: str) -> dict[str, list[dict]]:
    """The records by their value of `column`, in sorted order of the values."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if column not in record:
            raise DataError(f"data.stratify_by column '{column}' is missing from a training record")
        groups[str(record[column])].append(record)
    return dict(sorted(groups.items()))


def stratified_sample(records: list[dict], k: int, column: str, rng: random.Random) -> list[dict]:
    """Take `k` records spread as evenly as possible over the values of `column` (round-robin)."""
    queues = [rng.sample(group, len(group)) for group in _groups(records, column).values()]
    picked: list[dict] = []
    while len(picked) < k and queues:
        queues = [queue for queue in queues if queue]
        for queue in queues:
            if len(picked) == k:
                break
            picked.append(queue.pop())
    rng.shuffle(picked)
    return picked


def stratified_split(
    records: list[dict], k: int, column: str, rng: random.Random
) -> tuple[list[dict], list[dict]]:
    """(k records, the rest), each value of `column` giving its share of the k (largest remainder) and
    keeping at least one record in the rest (so fewer than k when single-record values would be needed).
    With few rows per label a random carve can take 3 of a label's 10 examples and none of another's: this
    takes one from each."""
    groups = _groups(records, column)
    share = {value: len(group) * k / len(records) for value, group in groups.items()}
    quota = {value: min(int(share[value]), len(groups[value]) - 1) for value in groups}
    by_remainder = sorted(groups, key=lambda value: (quota[value] - share[value], rng.random()))
    for value in by_remainder[: max(0, k - sum(quota.values()))]:
        quota[value] = min(quota[value] + 1, len(groups[value]) - 1)
    taken, rest = [], []
    for value, group in groups.items():
        shuffled = rng.sample(group, len(group))
        taken += shuffled[: quota[value]]
        rest += shuffled[quota[value] :]
    rng.shuffle(taken)
    rng.shuffle(rest)
    return taken, rest


def load_splits(data: DataConfig) -> Splits:
    rng = random.Random(data.seed)
    train = read_records(data.train)
    if not train:
        raise DataError(f"data.train: {data.train} has no rows")
    validation = read_records(data.validation) if data.validation else []
    if not validation and data.validation_fraction > 0:
        cut = max(1, int(len(train) * data.validation_fraction))
        if data.stratify_by:
            validation, train = stratified_split(train, cut, data.stratify_by, rng)
        else:
            train = rng.sample(train, len(train))
            validation, train = train[:cut], train[cut:]
    if data.max_train_examples and len(train) > data.max_train_examples:
        if data.stratify_by:
            train = stratified_sample(train, data.max_train_examples, data.stratify_by, rng)
        else:
            train = rng.sample(train, data.max_train_examples)
    if data.max_validation_examples and len(validation) > data.max_validation_examples:
        validation = random.Random(data.seed + 1).sample(validation, data.max_validation_examples)
    test = read_records(data.test) if data.test else []
    return Splits(train=train, validation=validation, test=test)
