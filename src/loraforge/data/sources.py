"""Read example records from JSONL, JSON, CSV or Parquet files."""

import json
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
        return _read_jsonl(path)
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


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object")
            rows.append(row)
    return rows


def is_chat_record(record: dict) -> bool:
    """OpenAI-chat fine-tuning format: `{"messages": [{"role": ..., "content": ...}, ...]}`."""
    return isinstance(record.get("messages"), list)
