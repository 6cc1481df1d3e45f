"""Build versioned fine-tuning datasets from logged calls: select, apply feedback, dedupe, split, write."""

import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loraforge.errors import DataError, LoraforgeError
from loraforge.paths import loraforge_home
from loraforge.store.database import redact
from loraforge.store.examples import Example, call_to_example
from loraforge.store.models import Call, Dataset, DatasetRow, Feedback, utcnow
from loraforge.store.store import Store

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
FILES = ("train.jsonl", "test.jsonl", "manifest.json")


@dataclass(frozen=True)
class DatasetFilter:
    task: str
    since: str | None = None  # ISO date/time, UTC
    min_score: float | None = None
    use_corrections: bool = False
    dedupe: bool = False
    test_fraction: float = 0.1

    def validate(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise LoraforgeError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.since is not None:
            parse_since(self.since)


@dataclass
class Row:
    example: Example
    corrected: bool
    score: float | None
    time: datetime
    split: str = "train"


@dataclass
class BuildResult:
    name: str
    version: int
    path: Path
    content_hash: str
    counts: dict[str, int] = field(default_factory=dict)
    reused: bool = False


RELATIVE_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str) -> datetime:
    """An ISO date/time (UTC unless it has an offset) or a span back from now: 30m, 12h, 7d, 2w."""
    relative = RELATIVE_SINCE.match(value.strip())
    if relative:
        seconds = float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        return utcnow() - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise LoraforgeError(
            f"--since {value!r} is not an ISO date (e.g. 2026-01-31 or 2026-01-31T12:00) "
            "nor a span such as 7d, 12h or 30m"
        ) from exc
    # Calls are stored in naive UTC; an offset in the input is honoured, a naive input is taken as UTC.
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def datasets_root() -> Path:
    return loraforge_home() / "datasets"


def build_dataset(store: Store, name: str, filt: DatasetFilter, root: Path | None = None) -> BuildResult:
    """Build dataset NAME from the store; reuses the newest version when its content would be identical."""
    if not NAME_RE.match(name):
        raise LoraforgeError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    filt.validate()
    rows, counts = select_rows(store, filt)
    if not rows:
        raise DataError(f"no usable successful calls for task {filt.task!r} match the filter")
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == "test"]
    train_bytes, test_bytes = _jsonl(train), _jsonl(test)
    filter_json = json.dumps(asdict(filt), sort_keys=True)
    content_hash = hashlib.sha256(filter_json.encode() + b"\n" + train_bytes + b"\0" + test_bytes).hexdigest()
    counts.update(rows=len(rows), train=len(train), test=len(test))
    root = root or datasets_root()

    with Session(store.engine) as session:
        latest = session.scalars(
            select(Dataset).where(Dataset.name == name).order_by(Dataset.version.desc()).limit(1)
        ).first()
        latest_version = latest.version if latest else 0
        if latest is not None and latest.content_hash == content_hash and Path(latest.path).is_dir():
            return BuildResult(name, latest.version, Path(latest.path), content_hash, counts, reused=True)
    version = latest_version + 1
    target = root / name / f"v{version}"
    manifest = {
        "name": name,
        "version": version,
        "created": utcnow().isoformat(),
        "format": "openai-chat",
        "filter": asdict(filt),
        "counts": counts,
        "content_hash": content_hash,
        "files": {"train": "train.jsonl", "test": "test.jsonl"},
        "store": redact(store.url),
    }
    _write_dir(target, train_bytes, test_bytes, manifest)
    try:
        _insert_dataset(store, name, version, filt, rows, content_hash, target)
    except IntegrityError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise LoraforgeError(
            f"dataset {name} v{version} was created concurrently; run the build again"
        ) from exc
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return BuildResult(name, version, target, content_hash, counts)


def _insert_dataset(
    store: Store, name: str, version: int, filt: DatasetFilter, rows: list[Row], content_hash: str, path: Path
) -> None:
    """The dataset and its rows' provenance, in one transaction."""
    with Session(store.engine) as session, session.begin():
        dataset = Dataset(
            name=name,
            version=version,
            filter=asdict(filt),
            row_count=len(rows),
            train_count=sum(r.split == "train" for r in rows),
            test_count=sum(r.split == "test" for r in rows),
            content_hash=content_hash,
            path=str(path),
        )
        session.add(dataset)
        session.flush()
        session.add_all(
            DatasetRow(
                dataset_id=dataset.id,
                call_id=r.example.call_id,
                corrected=r.corrected,
                split=r.split,
                input_hash=r.example.input_hash,
            )
            for r in rows
        )


def select_rows(store: Store, filt: DatasetFilter) -> tuple[list[Row], dict[str, int]]:
    """The rows of a dataset (with splits) and counts of what each step kept or dropped."""
    query = select(Call).where(Call.task == filt.task, Call.status == "ok", Call.shadow_of.is_(None))
    query = query.order_by(Call.time, Call.id)  # shadow answers mirror a call: never examples of their own
    if filt.since:
        query = query.where(Call.time >= parse_since(filt.since))
    fb_query = (
        select(Feedback).join(Call, Feedback.call_id == Call.id).where(Call.task == filt.task)
    ).order_by(Feedback.time, Feedback.id)
    with Session(store.engine) as session:
        calls = list(session.scalars(query))
        latest_feedback = {fb.call_id: fb for fb in session.scalars(fb_query)}  # later rows overwrite
        counts = {"selected": len(calls), "unusable": 0, "low_score": 0, "corrected": 0, "duplicates": 0}
        rows: list[Row] = []
        for call in calls:
            example = call_to_example(call)
            if example is None:
                counts["unusable"] += 1
                continue
            fb = latest_feedback.get(call.id)
            score = fb.score if fb else None
            if filt.min_score is not None and score is not None and score < filt.min_score:
                counts["low_score"] += 1
                continue
            corrected = bool(filt.use_corrections and fb and fb.corrected_output is not None)
            if corrected:
                example = Example(example.call_id, example.messages, fb.corrected_output, example.input_hash)
                counts["corrected"] += 1
            rows.append(Row(example, corrected, score, call.time))
    if filt.dedupe:
        rows, counts["duplicates"] = _dedupe(rows)
    for row in rows:
        row.split = split_of(row.example.input_hash, filt.test_fraction)
    return rows, counts


def split_of(input_hash: str, test_fraction: float) -> str:
    """Deterministic split by input hash, so equal inputs always land in the same split."""
    return "test" if int(input_hash[:16], 16) / 2**64 < test_fraction else "train"


def _dedupe(rows: list[Row]) -> tuple[list[Row], int]:
    """One row per normalized input: a corrected one first, then the best-scored, then the newest."""
    best: dict[str, int] = {}
    for i, row in enumerate(rows):
        j = best.get(row.example.input_hash)
        if j is None or _rank(row) >= _rank(rows[j]):
            best[row.example.input_hash] = i
    keep = sorted(best.values())
    return [rows[i] for i in keep], len(rows) - len(keep)


def _rank(row: Row) -> tuple[bool, float]:
    return (row.corrected, row.score if row.score is not None else float("-inf"))


def _jsonl(rows: list[Row]) -> bytes:
    lines = (
        json.dumps(
            {"messages": [*r.example.messages, {"role": "assistant", "content": r.example.output}]},
            ensure_ascii=False,
        )
        for r in rows
    )
    return "".join(line + "\n" for line in lines).encode()


def _write_dir(target: Path, train: bytes, test: bytes, manifest: dict[str, Any]) -> None:
    """Write the version directory atomically (temp dir + rename), replacing a crashed build's leftover."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "train.jsonl").write_bytes(train)
    (tmp / "test.jsonl").write_bytes(test)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def list_datasets(store: Store) -> list[Dataset]:
    with Session(store.engine, expire_on_commit=False) as session:
        return list(session.scalars(select(Dataset).order_by(Dataset.name, Dataset.version)))


def get_dataset(store: Store, name: str, version: int | None = None) -> Dataset:
    """A dataset version (the newest when `version` is None); raises LoraforgeError when absent."""
    with Session(store.engine, expire_on_commit=False) as session:
        query = select(Dataset).where(Dataset.name == name)
        if version is None:
            query = query.where(
                Dataset.version
                == select(func.max(Dataset.version)).where(Dataset.name == name).scalar_subquery()
            )
        else:
            query = query.where(Dataset.version == version)
        dataset = session.scalars(query).first()
    if dataset is None:
        suffix = f" version {version}" if version is not None else ""
        raise LoraforgeError(f"no dataset {name!r}{suffix} in the store (see `loraforge dataset list`)")
    return dataset


def dataset_rows(store: Store, dataset_id: int) -> list[DatasetRow]:
    with Session(store.engine, expire_on_commit=False) as session:
        query = select(DatasetRow).where(DatasetRow.dataset_id == dataset_id).order_by(DatasetRow.id)
        return list(session.scalars(query))


def export_dataset(dataset: Dataset, out: Path, force: bool = False) -> list[Path]:
    """Copy a version's files into `out`; refuses to overwrite existing files unless `force`."""
    src = Path(dataset.path)
    if not src.is_dir():
        raise DataError(f"dataset {dataset.name} v{dataset.version}: its directory {src} is missing")
    out.mkdir(parents=True, exist_ok=True)
    clashes = [out / f for f in FILES if (out / f).exists()]
    if clashes and not force:
        raise LoraforgeError(f"{clashes[0]} already exists (use --force to overwrite)")
    return [Path(shutil.copy2(src / f, out / f)) for f in FILES]
