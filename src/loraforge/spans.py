"""Time spans as users write them on the command line: `90s`, `30m`, `12h`, `7d`, `2w`."""

import re

SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def span_seconds(text: str) -> float | None:
    """The span's length in seconds, or None when `text` is not a span."""
    match = SPAN.match(text)
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)] if match else None
