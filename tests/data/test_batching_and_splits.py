import json
from collections import Counter

from loraforge.config.schema import DataConfig
from loraforge.data.batching import collate, length_grouped_batches, padding_fraction
from loraforge.data.splits import load_splits
from loraforge.data.tokenize import IGNORE_INDEX, TokenizedExample


def test_length_grouped_batches_are_deterministic_complete_and_tight():
    lengths = [(i * 37) % 90 + 5 for i in range(500)]
    first = length_grouped_batches(lengths, batch_size=8, seed=1, epoch=0)
    assert first == length_grouped_batches(lengths, batch_size=8, seed=1, epoch=0)
    assert first != length_grouped_batches(lengths, batch_size=8, seed=1, epoch=1)
    assert sorted(i for batch in first for i in batch) == list(range(500))
    naive = [list(range(i, min(i + 8, 500))) for i in range(0, 500, 8)]
    assert padding_fraction(first, lengths) < 0.1 < padding_fraction(naive, lengths)


def test_collate_pads_right_and_masks_padding():
    batch = collate([TokenizedExample([5, 6, 7], [IGNORE_INDEX, 6, 7]), TokenizedExample([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_splits_carve_validation_and_stratify(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i < 90 else "b"} for i in range(100)]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_splits(
        DataConfig(train=train_file, validation_fraction=0.1, max_train_examples=20, stratify_by="label")
    )
    assert len(splits.validation) == 10
    assert len(splits.train) == 20
    texts_val = {r["text"] for r in splits.validation}
    assert not texts_val & {r["text"] for r in splits.train}
    labels = [r["label"] for r in splits.train]
    assert labels.count("b") >= min(10, 10 - sum(r["label"] == "b" for r in splits.validation))
    again = load_splits(
        DataConfig(train=train_file, validation_fraction=0.1, max_train_examples=20, stratify_by="label")
    )
    assert again.train == splits.train


def test_stratified_carve_takes_each_label_its_share(tmp_path):
    # Few-shot: 10 rows for each of 30 labels, one label with a single row, one with 100.
    rows = [{"text": f"{label}-{i}", "label": label} for label in range(30) for i in range(10)]
    rows += [{"text": "lonely", "label": "lonely"}]
    rows += [{"text": f"big-{i}", "label": "big"} for i in range(100)]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DataConfig(train=train_file, validation_fraction=0.1, stratify_by="label")
    splits = load_splits(config)
    carved = Counter(r["label"] for r in splits.validation)
    assert carved == {**{label: 1 for label in range(30)}, "big": 10}  # 40 = int(401 * 0.1)
    kept = Counter(r["label"] for r in splits.train)
    assert kept["lonely"] == 1 and all(kept[label] == 9 for label in range(30)) and kept["big"] == 90
    assert load_splits(config) == splits  # seeded
    unstratified = load_splits(config.model_copy(update={"stratify_by": None}))
    assert len(unstratified.validation) == 40
    assert Counter(r["label"] for r in unstratified.validation) != carved


def test_reads_csv_and_parquet(tmp_path):
    import pandas as pd

    from loraforge.data.sources import read_records

    frame = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    assert read_records(tmp_path / "d.csv") == [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    assert read_records(tmp_path / "d.parquet") == read_records(tmp_path / "d.csv")
