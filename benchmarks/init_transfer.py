"""Do `loraforge init`'s defaults transfer? For each setting: build its data, run `init`, `train` (which
evaluates on our engine, labels constrained, at the end) and print one table row.

Settings (data from /work/shared/data, fixed seeds, so every row is reproducible):
- banking77-K: K training examples per label (stratified sample of Banking77 train, seed 0); evaluated on the
  full test split (3,080 rows), or with `--eval-on validation` on 3 rows per label (`--validation-per-label`)
  carved from the *rest of train* (231 rows) — the split the rules are tuned on; the test split is never used
  for tuning.
- viggo: utterance -> meaning representation (structured output), 300 train rows, 100 test MRs; slot F1.
- gsm8k: question -> worked answer, 200 train rows, 50 test rows; final-answer accuracy.
- banking77oos-K: Banking77 with 10 labels held out as `oos` (the shape of CLINC150's out-of-scope class),
  K per label; `init` makes `oos` the fallback label. With `--eval-on test`, the adapter is also evaluated
  on the validation rows and the fallback's cut chosen there is applied to the test predictions
  (run/fallback.json): accuracy, in-scope accuracy and out-of-scope recall with no fallback, at init's
  default and at the chosen cut.

    python benchmarks/init_transfer.py --settings banking77-5,banking77-10 [--eval-on validation]
        [--test-limit N] [--set trainer.epochs=3 ...] [--workdir /tmp/init-transfer]

Runs are sequential, each under `nice -n 10` (the machine is shared; do not wrap the script itself in `nice`:
niceness adds up); each row is appended to
WORKDIR/results.jsonl and the table printed at the end lists every row there (`--table` prints only).
"""

import argparse
import json
import random
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

from loraforge.classify.label_index import Neighbour

DATA = Path("/work/shared/data")
SEED = 0
VALIDATION_PER_LABEL = 3
OOS_LABELS = 10  # banking77oos-K: labels held out as out of scope (13% of the test rows)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _save(folder: Path, eval_on: str, train: list[dict], held_out: list[dict], *columns: str) -> tuple:
    """(train file, held-out file, input column, target column)."""
    return _write(folder / "train.jsonl", train), _write(folder / f"{eval_on}.jsonl", held_out), *columns


def banking77(
    per_label: int, folder: Path, eval_on: str, validation_per_label: int = VALIDATION_PER_LABEL
) -> tuple[Path, Path, str, str]:
    """K per label for training; validation from the rest of train; test as published."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for row in _read(DATA / "banking77/train.jsonl"):
        by_label[row["label"]].append(row)
    rng = random.Random(SEED)
    train, validation = [], []
    for label in sorted(by_label):
        rows = rng.sample(by_label[label], per_label + validation_per_label)
        train += rows[:per_label]
        validation += rows[per_label:]
    rng.shuffle(train)
    held_out = validation if eval_on == "validation" else _read(DATA / "banking77/test.jsonl")
    return (
        _write(folder / "train.jsonl", train),
        _write(folder / f"{eval_on}.jsonl", held_out),
        "text",
        "label",
    )


def banking77_oos(
    per_label: int, folder: Path, eval_on: str, validation_per_label: int = VALIDATION_PER_LABEL
) -> tuple[Path, Path, str, str]:
    """An out-of-scope task made from Banking77 (the CLINC150 shape): OOS_LABELS labels held out, their rows
    relabeled `oos`. Training: K per kept label and K `oos` rows drawn from the held-out labels; validation (3
    per kept label, 3 per held-out one) from the rest of train; test: the test split, relabeled."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for row in _read(DATA / "banking77/train.jsonl"):
        by_label[row["label"]].append(row)
    held = set(random.Random(SEED + 1).sample(sorted(by_label), OOS_LABELS))
    rng = random.Random(SEED)
    train, validation, unseen = [], [], []
    for label in sorted(by_label):
        rows = rng.sample(by_label[label], per_label + validation_per_label)
        relabel = [{**r, "label": "oos"} for r in rows] if label in held else rows
        (unseen if label in held else train).extend(relabel[:per_label])
        validation += relabel[per_label:]
    train += rng.sample(unseen, per_label)
    rng.shuffle(train)
    test = [{**r, "label": "oos"} if r["label"] in held else r for r in _read(DATA / "banking77/test.jsonl")]
    held_out = validation if eval_on == "validation" else test
    _write(folder / "validation.jsonl", validation)  # for choosing the fallback's cut
    return (
        _write(folder / "train.jsonl", train),
        _write(folder / f"{eval_on}.jsonl", held_out),
        "text",
        "label",
    )


def fallback_sweep(config_path: Path, run_dir: Path, validation: Path) -> dict:
    """The fallback's cut chosen on the validation rows (the adapter evaluated there), applied to the test
    predictions: accuracy, in-scope accuracy and out-of-scope recall with no fallback, at init's default and
    at the chosen cut. The cut is the config classifier's (evaluate/runner.py `classify`): for the nearest
    example, the margin by which a row must be nearer its label's example than an `oos` one and the least
    similarity to it (`margin/min_similarity`); for the decoded label, its probability."""
    out = run_dir / "validation" / "eval.json"
    evaluate = ["evaluate", str(config_path), "--adapter", str(run_dir / "adapter")]
    subprocess.run(
        _loraforge(*evaluate, "--set", f"data.test={validation}", "--output", str(out)), check=True
    )
    report = json.loads((run_dir / "eval.json").read_text())
    rule = report["fallback"]

    if report["classifier"] == "nearest":
        margins = [round(0.02 * i, 2) for i in range(11)]
        floors = [-1.0] + [round(0.05 * i, 2) for i in range(8, 16)]
        candidates = [(m, s) for m in margins for s in floors]  # (0, -1): no fallback
        default = (rule["margin"], rule["min_similarity"])

        def answer(sample: dict, cut: tuple) -> str:
            neighbour = Neighbour(
                sample["adapter_nearest"],
                sample["adapter_similarity"],
                sample.get("adapter_fallback_similarity"),  # none: no `oos` rows in the index
            )
            return neighbour.or_fallback("oos", *cut)

        name, none = "margin/min_similarity", (0.0, -1.0)
    else:
        candidates = [round(0.05 * i, 2) for i in range(20)]  # 0: no fallback
        default = rule["threshold"]

        def answer(sample: dict, cut: float) -> str:
            return sample["adapter_label"] if sample["adapter_probability"] >= cut else "oos"

        name, none = "threshold", 0.0

    def scores(samples: list[dict], cut) -> dict:
        hits = [answer(s, cut) == s["reference"] for s in samples]
        oos = [h for h, s in zip(hits, samples, strict=True) if s["reference"] == "oos"]
        kept = [h for h, s in zip(hits, samples, strict=True) if s["reference"] != "oos"]
        return {
            "accuracy": sum(hits) / len(hits),
            "in_scope": sum(kept) / len(kept),
            "oos_recall": sum(oos) / len(oos),
        }

    def key(cut) -> str:
        return "/".join(map(str, cut)) if isinstance(cut, tuple) else str(cut)

    on_validation = _read(out.with_name("predictions.jsonl"))
    by_cut = {cut: scores(on_validation, cut)["accuracy"] for cut in candidates}
    chosen = max(candidates, key=lambda cut: by_cut[cut])  # the first best: the smallest cut
    test = _read(run_dir / "predictions.jsonl")
    return {
        "cut": name,
        "chosen_on_validation": key(chosen),
        **{f"test_at_{key(cut)}": scores(test, cut) for cut in dict.fromkeys([none, default, chosen])},
        "validation_by_cut": {key(cut): round(value, 4) for cut, value in by_cut.items()},
    }


def viggo(folder: Path, eval_on: str) -> tuple[Path, Path, str, str]:
    """Utterance -> MR; one reference per MR in the held-out split."""
    rng = random.Random(SEED)
    train = rng.sample(_read(DATA / "viggo/train.jsonl"), 300)
    source = "validation" if eval_on == "validation" else "test"
    first = {r["input"]: r for r in _read(DATA / f"viggo/{source}.jsonl")}
    held_out = rng.sample(sorted(first.values(), key=lambda r: r["input"]), 100)
    return (
        _write(folder / "train.jsonl", train),
        _write(folder / f"{eval_on}.jsonl", held_out),
        "output",
        "input",
    )


def gsm8k(folder: Path, eval_on: str) -> tuple[Path, Path, str, str]:
    """Question -> worked answer without the <<calc>> annotations (shorter targets for a 135M model)."""
    rng = random.Random(SEED)

    def clean(rows: list[dict]) -> list[dict]:
        return [{"question": r["question"], "answer": re.sub(r"<<[^>]*>>", "", r["answer"])} for r in rows]

    rows = _read(DATA / "gsm8k/train.jsonl")
    rng.shuffle(rows)
    train, validation = clean(rows[:200]), clean(rows[200:250])
    held_out = (
        validation if eval_on == "validation" else clean(rng.sample(_read(DATA / "gsm8k/test.jsonl"), 50))
    )
    return (
        _write(folder / "train.jsonl", train),
        _write(folder / f"{eval_on}.jsonl", held_out),
        "question",
        "answer",
    )


def _final_answer(text: str) -> str:
    tail = text.split("####")[-1] if "####" in text else ""
    numbers = re.findall(r"-?\d[\d,]*\.?\d*", tail)
    return numbers[0].replace(",", "").rstrip(".") if numbers else ""


def task_metric(setting: str, run_dir: Path, report: dict) -> tuple[str, float]:
    """The setting's headline metric from eval.json / predictions.jsonl."""
    from loraforge.evaluate.metrics import slot_f1

    adapter = next(name for name in report["results"] if name != "base")
    if setting.startswith("banking77"):
        return "accuracy", report["results"][adapter]["accuracy"]
    samples = _read(run_dir / "predictions.jsonl")
    predictions, references = [s[adapter] for s in samples], [s["reference"] for s in samples]
    if setting == "viggo":
        return "slot_f1", slot_f1(predictions, references)
    hits = [_final_answer(p) == _final_answer(r) != "" for p, r in zip(predictions, references, strict=True)]
    return "final_answer_acc", sum(hits) / len(hits)


def _loraforge(*args: str) -> list[str]:
    return ["nice", "-n", "10", sys.executable, "-m", "loraforge", *args]


def run_setting(
    setting: str,
    workdir: Path,
    eval_on: str,
    test_limit: int | None,
    sets: list[str],
    init_only: bool,
    validation_per_label: int = VALIDATION_PER_LABEL,
) -> dict | None:
    """Build the data, `init`, then (unless `init_only`) `train` + evaluate; the table row."""
    folder = workdir / eval_on / setting
    if setting.startswith("banking77oos-"):
        train, held_out, input_column, target = banking77_oos(
            int(setting.split("-")[1]), folder / "data", eval_on, validation_per_label
        )
    elif setting.startswith("banking77-"):
        train, held_out, input_column, target = banking77(
            int(setting.split("-")[1]), folder / "data", eval_on, validation_per_label
        )
    else:
        train, held_out, input_column, target = {"viggo": viggo, "gsm8k": gsm8k}[setting](
            folder / "data", eval_on
        )
    config_path = folder / "config.yaml"
    init = [
        "init", "--data", str(train), "--input", input_column, "--target", target,
        "--test", str(held_out), "--out", str(config_path), "--force",
    ]  # fmt: skip
    subprocess.run(_loraforge(*init), check=True)
    config = yaml.safe_load(config_path.read_text())
    if init_only:
        return None
    run_dir = folder / "run"
    overrides = [*sets, *([f"evaluation.limit={test_limit}"] if test_limit else [])]
    started = time.monotonic()
    train_args = [
        "train",
        str(config_path),
        "-o",
        str(run_dir),
        *[a for s in overrides for a in ("--set", s)],
    ]
    subprocess.run(_loraforge(*train_args), check=True)
    wall = time.monotonic() - started
    summary = json.loads((run_dir / "summary.json").read_text())
    report = json.loads((run_dir / "eval.json").read_text())
    metric, value = task_metric(setting, run_dir, report)
    results = next(v for k, v in report["results"].items() if k != "base")
    trainer, adapter = config["trainer"], config["adapter"]
    if setting.startswith("banking77oos-") and eval_on == "test":
        fallback = fallback_sweep(config_path, run_dir, folder / "data" / "validation.jsonl")
        (run_dir / "fallback.json").write_text(json.dumps(fallback, indent=2) + "\n")
        print(json.dumps(fallback, indent=2))
    return {
        "setting": setting,
        "eval_on": eval_on,
        "overrides": sets,
        "examples": summary["train_examples"] + summary["validation_examples"],
        "labels": len(json.loads(Path(config["evaluation"]["labels"]).read_text()))
        if "labels" in config["evaluation"]
        else None,
        "lr": trainer["learning_rate"],
        "rank": adapter["r"],
        "epochs": trainer["epochs"],
        "targets": adapter["target_modules"],
        "steps": summary["steps"],
        "train_s": summary["train_seconds"],
        "wall_s": round(wall, 1),
        "rows": report["rows"],
        "metric": metric,
        "value": value,
        "invalid": results.get("out_of_label_rate"),
    }


def print_table(rows: list[dict]) -> None:
    from loraforge.hardware import describe

    print(f"CPU: {describe()}")
    header = "setting | on | examples | labels | lr | rank | epochs | targets | steps | train s | wall s | rows | metric | invalid | overrides"  # noqa: E501
    print(header)
    for r in rows:
        invalid = "-" if r["invalid"] is None else f"{r['invalid']:.1%}"
        cells = [
            r["setting"], r["eval_on"], r["examples"], r["labels"] or "-", f"{r['lr']:g}", r["rank"],
            r["epochs"], r["targets"], r["steps"], f"{r['train_s']:.0f}", f"{r['wall_s']:.0f}", r["rows"],
            f"{r['metric']} {r['value']:.1%}", invalid, " ".join(r["overrides"]) or "-",
        ]  # fmt: skip
        print(" | ".join(map(str, cells)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="banking77-5,banking77-10,banking77-25,viggo,gsm8k")
    parser.add_argument("--eval-on", choices=["test", "validation"], default="test")
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate N rows (timing)")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="train override (experiments)"
    )
    parser.add_argument(
        "--validation-per-label",
        type=int,
        default=VALIDATION_PER_LABEL,
        help="Banking77 rows per label carved from the rest of train for --eval-on validation",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/init-transfer"))
    parser.add_argument("--table", action="store_true", help="print the table of past rows and exit")
    parser.add_argument("--init-only", action="store_true", help="only build the data and run init")
    args = parser.parse_args()
    results = args.workdir / "results.jsonl"
    if not args.table:
        for setting in args.settings.split(","):
            row = run_setting(
                setting,
                args.workdir,
                args.eval_on,
                args.test_limit,
                args.sets,
                args.init_only,
                args.validation_per_label,
            )
            if row is None:
                continue
            args.workdir.mkdir(parents=True, exist_ok=True)
            with results.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    print_table(_read(results) if results.exists() else [])


if __name__ == "__main__":
    main()
