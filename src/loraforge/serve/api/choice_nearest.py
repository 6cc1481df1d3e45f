"""Extension: answer a `guided_choice` with the label of the nearest training example
(`guided_choice_classifier: "nearest"`), the serving side of a fine-tuning config's `evaluation.classifier:
nearest`. The adapter's label index (classify/label_index.py, written beside its weights by `loraforge
train`) holds its training rows' answer states; the request's own answer state, from the prefill that
completes its prompt, takes the label of the most similar row. So an adapter serves what `loraforge evaluate`
scored.

    extra_body={"guided_choice": labels, "guided_choice_classifier": "nearest"}

The index is read only from the folder of an adapter the operator provided (an explicit path or the adapter
directory), never from a hub download or a merge. The label is still decoded (its tokens, logprobs and usage
are the ones reported); `guided_choice_fallback` answers its label unless the request is at least its
`margin` nearer another label's examples than the fallback label's and at least `min_similarity` similar to
them (choice_fallback.py), as in evaluation.
Like the fallback, a streamed answer holds the choice back and sends the label in one chunk."""

import threading
from pathlib import Path

import torch

from loraforge.classify.label_index import INDEX_FILE, LabelIndex
from loraforge.errors import LoraforgeError, ModelNotFoundError
from loraforge.serve.api.choice_fallback import PARAM as FALLBACK
from loraforge.serve.api.choice_fallback import ChoiceFallback
from loraforge.serve.api.errors import APIError
from loraforge.serve.engine.async_engine import AsyncEngine
from loraforge.serve.lora.manager import AdapterRef

PARAM = "guided_choice_classifier"
NEAREST = "nearest"
CACHED = 64  # indexes kept in memory, one per adapter folder (the latest version of its file)


def _error(problem: str) -> APIError:
    return APIError(400, f"{PARAM}: {problem}", "invalid_request_error", PARAM)


def check(req) -> None:
    """APIError 400 when the request asks for the nearest label without the choices to answer among."""
    if req.guided_choice_classifier == NEAREST and req.guided_choice is None:
        raise _error("needs guided_choice (the labels the model chooses among)")


def index_for(engine: AsyncEngine, adapter: AdapterRef | None, req) -> LabelIndex:
    """The label index a nearest-label request answers with; APIError 400 when there is none it can use.
    Runs in the thread pool: reads the file system."""
    index = None
    if adapter is not None and adapter.local:
        try:
            folder = engine.adapter_folder(adapter.name)
            index = _cache.get(folder) if folder is not None else None
        except ModelNotFoundError:  # unregistered since it was resolved: nothing to read any more
            pass
        except LoraforgeError as exc:
            raise _error(f"the model '{req.model}': {exc}") from None
    if index is None:
        raise _error(
            f"the model '{req.model}' has no label index: an adapter the server provides, trained with "
            f"evaluation.classifier 'nearest' ({INDEX_FILE} beside its weights)"
        )
    try:
        index.check_fits(engine.hidden_size, req.guided_choice, "guided_choice")
    except LoraforgeError as exc:
        raise _error(f"the model '{req.model}': {exc}") from None
    if req.guided_choice_fallback is not None:
        try:
            index.check_fallback(req.guided_choice_fallback.label)
        except LoraforgeError as exc:
            problem = f"{FALLBACK}: the model '{req.model}': {exc}"
            raise APIError(400, problem, "invalid_request_error", FALLBACK) from None
    return index


class _IndexCache:
    """The index of each adapter folder, read again when its file changes (a retrained adapter): one entry
    a folder, at most CACHED of them."""

    def __init__(self) -> None:
        self.entries: dict[Path, tuple[tuple[int, int], LabelIndex]] = {}
        self.lock = threading.Lock()

    def get(self, folder: Path) -> LabelIndex | None:
        try:
            stat = (folder / INDEX_FILE).stat()
        except FileNotFoundError:
            return None
        version = (stat.st_mtime_ns, stat.st_size)
        with self.lock:
            hit = self.entries.get(folder)
        if hit is not None and hit[0] == version:
            return hit[1]
        index = LabelIndex.load(folder)
        if index is not None:
            with self.lock:
                self.entries.pop(folder, None)
                self.entries[folder] = (version, index)
                while len(self.entries) > CACHED:
                    self.entries.pop(next(iter(self.entries)))
        return index


_cache = _IndexCache()


def answer(index: LabelIndex, state: torch.Tensor, fallback: ChoiceFallback | None) -> str:
    """The label of the training row nearest to a choice's answer state, or the fallback's label where the
    state is not at least its margin nearer that row than the fallback label's nearest row, or is less similar
    than its `min_similarity` to it."""
    if fallback is None:
        return index.nearest(state[None])[0].label
    rule = fallback.rule(NEAREST)
    neighbour = index.nearest(state[None], fallback.label)[0]
    return neighbour.or_fallback(fallback.label, rule.margin, rule.min_similarity)
