"""Extension: answer a `guided_choice` with the label of the nearest training example
(`guided_choice_classifier: "nearest"`), the serving side of a fine-tuning config's `evaluation.classifier:
nearest`. The adapter's label index (classify/label_index.py, written beside its weights by `loraforge
train`) holds its training rows' answer states; the request's own answer state, from the prefill that
completes its prompt, takes the label of the most similar row. So an adapter serves what `loraforge evaluate`
scored.

    extra_body={"guided_choice": labels, "guided_choice_classifier": "nearest"}

The index is read only from the folder of an adapter the operator provided (an explicit path or the adapter
directory), never from a hub download or a merge. The label is still decoded (its tokens, logprobs and usage
are the ones reported), and `guided_choice_fallback` applies to the decoded label's probability, as in
evaluation; like the fallback, a streamed answer holds the choice back and sends the label in one chunk."""

from functools import lru_cache
from pathlib import Path

import torch

from loraforge.classify.label_index import INDEX_FILE, LabelIndex
from loraforge.errors import LoraforgeError
from loraforge.serve.api.errors import APIError
from loraforge.serve.engine.async_engine import AsyncEngine
from loraforge.serve.lora.manager import AdapterRef

PARAM = "guided_choice_classifier"
NEAREST = "nearest"


def _error(problem: str) -> APIError:
    return APIError(400, f"{PARAM}: {problem}", "invalid_request_error", PARAM)


def check(req) -> None:
    """APIError 400 when the request asks for the nearest label without the choices to answer among."""
    if req.guided_choice_classifier == NEAREST and req.guided_choice is None:
        raise _error("needs guided_choice (the labels the model chooses among)")


def index_for(engine: AsyncEngine, adapter: AdapterRef | None, req) -> LabelIndex:
    """The label index a nearest-label request answers with. Runs in the thread pool: reads the file."""
    folder = engine.adapter_folder(adapter.name) if adapter is not None and adapter.local else None
    path = folder / INDEX_FILE if folder is not None else None
    if path is None or not path.is_file():
        raise _error(
            f"the model '{req.model}' has no label index: an adapter the server provides, trained with "
            f"evaluation.classifier 'nearest' ({INDEX_FILE} beside its weights)"
        )
    stat = path.stat()
    try:
        index = _read(path.parent, stat.st_mtime_ns, stat.st_size)
    except LoraforgeError as exc:
        raise _error(str(exc)) from None
    outside = sorted({index.labels[i] for i in index.label_ids.unique().tolist()} - set(req.guided_choice))
    if outside:
        raise _error(f"the label index of '{req.model}' answers labels outside guided_choice: {outside[:5]}")
    return index


@lru_cache(maxsize=32)
def _read(folder: Path, mtime_ns: int, size: int) -> LabelIndex:
    """One read per version of the file (keyed by its time and size: a retrained adapter is read again)."""
    return LabelIndex.load(folder)


def answer(index: LabelIndex, state: torch.Tensor) -> str:
    """The label of the training row nearest to a choice's answer state."""
    return index.nearest(state[None])[0].label
