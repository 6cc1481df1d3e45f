"""Few-shot prompting: retrieve a task's most similar good examples (BM25) and lay them out as prior turns.

`ExampleIndex` is imported on first use: bm25s takes ~0.5 s to import, which `loraforge route ...` and the
store need not pay.
"""

from typing import Any

from loraforge.fewshot.examples import FewShotExample, query_text
from loraforge.fewshot.layout import fewshot_messages, fewshot_prompt
from loraforge.fewshot.settings import DEFAULT_K, MAX_K

__all__ = [
    "DEFAULT_K",
    "MAX_K",
    "ExampleIndex",
    "FewShotExample",
    "fewshot_messages",
    "fewshot_prompt",
    "query_text",
]


def __getattr__(name: str) -> Any:
    if name == "ExampleIndex":
        from loraforge.fewshot.index import ExampleIndex

        return ExampleIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
