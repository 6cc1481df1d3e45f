"""Build versioned fine-tuning datasets from logged calls: select, apply feedback, dedupe, split, write."""

import hashlib
import json
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loraforge.curation.rows import BATCH_ROWS, RowRef, file_digest_into, write_rows
from loraforge.errors import DataError, LoraforgeError
from loraforge.paths import loraforge_home
from loraforge.spans import span_seconds
from loraforge.store.database import redact
from loraforge.store.store import Store
from loraforge.store.tables import Dataset, DatasetRow, utcnow

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
    reviewed_only: bool = False  # only calls a person reviewed: corrected, or scored >= min_score

    def validate(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise LoraforgeError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.since is not None:
            parse_since(self.since)


@dataclass
class BuildResult:
    name: str
    version: int
    path: Path
    content_hash: str
    counts: dict[str, int] = field(default_factory=dict)
    reused: bool = False


def parse_since(value: str) -> datetime:
    """An ISO date/time (UTC unless it has an offset) or a span back from now: 30m, 12h, 7d, 2w."""
    seconds = span_seconds(value)
    if seconds is not None:
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
    """Build dataset NAME from the store; reuses the newest version when its content would be identical.

    Rows are streamed from the store into the files (see `loraforge.curation.rows`), so a build's
    memory does not grow with the number of calls' bodies.
    """
    if not NAME_RE.match(name):
        raise LoraforgeError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    filt.validate()
    root = root or datasets_root()
    (root / name).mkdir(parents=True, exist_ok=True)
    # A private staging directory: concurrent builds never write into each other's files.
    staging = root / name / f".build-{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    try:
        return _build_in(store, name, filt, root, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_in(store: Store, name: str, filt: DatasetFilter, root: Path, staging: Path) -> BuildResult:
    since = parse_since(filt.since) if filt.since else None
    with open(staging / "train.jsonl", "wb") as train, open(staging / "test.jsonl", "wb") as test:
        refs, counts = write_rows(store, filt, since, train, test)
    if not refs:
        raise DataError(f"no usable successful calls for task {filt.task!r} match the filter")
    hasher = hashlib.sha256(json.dumps(asdict(filt), sort_keys=True).encode() + b"\n")
    file_digest_into(hasher, staging / "train.jsonl")
    hasher.update(b"\0")
    file_digest_into(hasher, staging / "test.jsonl")
    content_hash = hasher.hexdigest()
    n_test = sum(r.split == "test" for r in refs)
    counts.update(rows=len(refs), train=len(refs) - n_test, test=n_test)

    with Session(store.db) as session:
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
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)  # a crashed build's leftover of this version
    staging.rename(target)
    try:
        _insert_dataset(store, name, version, filt, refs, content_hash, target)
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
    store: Store,
    name: str,
    version: int,
    filt: DatasetFilter,
    refs: list[RowRef],
    content_hash: str,
    path: Path,
) -> None:
    """The dataset and its rows' provenance, in one transaction."""
    with Session(store.db) as session, session.begin():
        n_test = sum(r.split == "test" for r in refs)
        dataset = Dataset(
            name=name,
            version=version,
            filter=asdict(filt),
            row_count=len(refs),
            train_count=len(refs) - n_test,
            test_count=n_test,
            content_hash=content_hash,
            path=str(path),
        )
        session.add(dataset)
        session.flush()
        for i in range(0, len(refs), BATCH_ROWS):
            session.execute(
                insert(DatasetRow),
                [
                    {
                        "dataset_id": dataset.id,
                        "call_id": r.call_id,
                        "corrected": r.corrected,
                        "split": r.split,
                        "input_hash": r.input_hash,
                    }
                    for r in refs[i : i + BATCH_ROWS]
                ],
            )


def list_datasets(store: Store) -> list[Dataset]:
    with Session(store.db, expire_on_commit=False) as session:
        return list(session.scalars(select(Dataset).order_by(Dataset.name, Dataset.version)))


def get_dataset(store: Store, name: str, version: int | None = None) -> Dataset:
    """A dataset version (the newest when `version` is None); raises LoraforgeError when absent."""
    with Session(store.db, expire_on_commit=False) as session:
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
    with Session(store.db, expire_on_commit=False) as session:
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
