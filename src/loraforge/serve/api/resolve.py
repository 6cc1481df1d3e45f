"""What a request's `model` (and `merge`) name: the base model, an adapter, or a merge of adapters."""

from loraforge.errors import LoraforgeError, ModelNotFoundError
from loraforge.serve.api import protocol as p
from loraforge.serve.api.errors import APIError
from loraforge.serve.engine.async_engine import AsyncEngine
from loraforge.serve.lora.manager import AdapterRef
from loraforge.serve.lora.merge import MergeSpec


def _not_found(what: str, exc: Exception, param: str) -> APIError:
    return APIError(404, f"{what} does not exist ({exc})", "invalid_request_error", param, "model_not_found")


def resolve_model(engine: AsyncEngine, req: p._Request) -> tuple[AdapterRef | None, str]:
    """The adapter to run (None: the base model) and the model name the answer reports: `model` itself,
    or the merged adapter's name (usable as `model` afterwards). Runs in a thread: it reads the file system
    and may compute a merge."""
    try:
        ref = engine.resolve(req.model)
    except ModelNotFoundError as exc:
        raise _not_found(f"the model '{req.model}'", exc, "model") from None
    if req.merge is None:
        return ref, req.model
    if ref is not None:
        raise APIError(
            400,
            f"model: with `merge`, name the base model ('{engine.model_name}'), not an adapter",
            "invalid_request_error",
            "model",
        )
    m = req.merge
    spec = MergeSpec(tuple(sorted(m.adapters.items())), m.method, m.density, m.majority_sign_method)
    try:
        ref = engine.merger.ensure(spec)
    except ModelNotFoundError as exc:
        raise _not_found("an adapter of the merge", exc, "merge.adapters") from None
    except LoraforgeError as exc:
        raise APIError(400, f"merge: {exc}", "invalid_request_error", "merge") from None
    return ref, ref.name
