"""Label-set files (a classifier's labels): one reader for evaluation, synthetic data and routes."""

import json
from pathlib import Path

from loraforge.errors import DataError


def load_labels(path: Path) -> list[str]:
    """Read a label set: a JSON list of strings, or one label per line. Labels are stripped; an empty file,
    an empty label or a label listed twice (ignoring case) is an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"labels file {path} is not valid JSON: {exc}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise DataError(f"labels file {path} must be a JSON list of strings")
        labels = [x.strip() for x in labels]
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise DataError(f"labels file {path} holds no labels")
    if any(not x for x in labels):
        raise DataError(f"labels file {path} contains an empty label")
    seen: set[str] = set()
    for label in labels:
        if label.casefold() in seen:
            raise DataError(f"labels file {path} lists '{label}' twice")
        seen.add(label.casefold())
    return labels
