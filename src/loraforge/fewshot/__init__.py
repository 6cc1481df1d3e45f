"""Few-shot prompting: retrieve a task's most similar good examples (BM25) and lay them out as prior turns."""

from loraforge.fewshot.examples import FewShotExample, query_text
from loraforge.fewshot.index import DEFAULT_K, MAX_K, ExampleIndex
from loraforge.fewshot.layout import fewshot_messages, fewshot_prompt

__all__ = [
    "DEFAULT_K",
    "MAX_K",
    "ExampleIndex",
    "FewShotExample",
    "fewshot_messages",
    "fewshot_prompt",
    "query_text",
]
