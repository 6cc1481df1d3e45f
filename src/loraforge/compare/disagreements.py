"""The items on which the two sides of a comparison answered differently, kept with the saved result so
that a person can read them (`loraforge ui`, the comparison's page)."""

from typing import Any

MAX_SAVED = 500  # disagreements kept per comparison (the result is one JSON value in the store)
MAX_CHARS = 2000  # per text


def disagreements(items: list[Any]) -> list[dict[str, Any]]:
    """Input (the last user turn), both answers and the reference, where the answers differ."""
    out = []
    for item in items:
        if item.candidate is None or item.baseline is None:
            continue
        a, b = item.candidate.text or "", item.baseline.text or ""
        if " ".join(a.split()) == " ".join(b.split()):
            continue
        user = [m["content"] for m in item.messages if m.get("role") == "user"]
        out.append(
            {
                "input": (user[-1] if user else "")[:MAX_CHARS],
                "candidate": a[:MAX_CHARS],
                "baseline": b[:MAX_CHARS],
                "reference": item.reference[:MAX_CHARS] if item.reference is not None else None,
            }
        )
        if len(out) == MAX_SAVED:
            break
    return out
