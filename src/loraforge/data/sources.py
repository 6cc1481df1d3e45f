"""Read example records from JSONL, JSON, CSV or Parquet files."""

import json
from collections.abc import Iterator
from pathlib import Path

from loraforge.errors import DataError

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet")


def read_records(path: str | Path) -> list[dict]:
    """All rows of a data file as dicts; the format follows the file extension."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [row for _, row in iter_jsonl(path)]
    if suffix == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise DataError(f"{path}: a .json data file must hold a list of objects")
        return rows
    if suffix in (".csv", ".parquet"):
        import pandas as pd

        frame = pd.read_csv(path, keep_default_na=False) if suffix == ".csv" else pd.read_parquet(path)
        return frame.to_dict(orient="records")
    raise DataError(f"{path}: unsupported data format '{suffix}' (expected one of {', '.join(SUPPORTED)})")


def iter_jsonl(path: Path, what: str = "data file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a bad line is a DataError naming the file and line."""
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{what} {path}, line {line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{what} {path}, line {line_no}: expected a JSON object")
            yield line_no, row


def is_chat_record(record: dict) -> bool:
    """OpenAI-chat fine-tuning format: `{"messages": [{"role": ..., "content": ...}, ...]}`."""
    return isinstance(record.get("messages"), list)
