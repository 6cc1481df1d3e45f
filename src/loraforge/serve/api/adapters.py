"""`POST /v1/adapters` (load, or reload from a new path) and `DELETE /v1/adapters/{name}` (unload).

Loading from a server path is an operator's act: it needs the admin key (`--admin-api-key`), or paths
confined to `--adapter-root`; without either it is off. With an admin key, every change of the adapter
set needs it (app.py adds that check to this router)."""

from pathlib import Path

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from loraforge.errors import LoraforgeError, ModelNotFoundError
from loraforge.serve.api import protocol as p
from loraforge.serve.api.deps import AdapterPolicy, get_adapter_policy, get_engine
from loraforge.serve.api.errors import APIError, from_engine_error
from loraforge.serve.engine.async_engine import AdapterInUseError, AsyncEngine

router = APIRouter()


def allowed_path(policy: AdapterPolicy, raw: str) -> Path:
    """The adapter folder a client named, where this server's policy allows it (runs in a thread)."""
    if policy.admin_api_key is None and policy.root is None:
        raise APIError(
            403,
            "path: loading adapters from a server path is off; the operator can enable it with "
            "--admin-api-key or --adapter-root",
            "invalid_request_error",
            "path",
            "path_loading_disabled",
        )
    path = Path(raw).expanduser().resolve()
    if policy.root is not None and not path.is_relative_to(policy.root):
        raise APIError(
            403,
            "path: outside the adapter root of this server (--adapter-root)",
            "invalid_request_error",
            "path",
            "path_outside_adapter_root",
        )
    if not (path / "adapter_config.json").is_file():
        raise APIError(
            404,
            f"path: '{raw}' has no adapter_config.json",
            "invalid_request_error",
            "path",
            "model_not_found",
        )
    return path


@router.post("/v1/adapters", response_model=p.AdapterStatus)
async def load_adapter(
    req: p.AdapterLoadRequest,
    engine: AsyncEngine = Depends(get_engine),
    policy: AdapterPolicy = Depends(get_adapter_policy),
):
    name = req.name
    try:
        path = None if req.path is None else await run_in_threadpool(allowed_path, policy, req.path)
        await engine.prepare_adapter(name, path)
    except AdapterInUseError as exc:
        raise from_engine_error(exc) from None
    except ModelNotFoundError as exc:
        raise APIError(404, str(exc), "invalid_request_error", "name", "model_not_found") from None
    except LoraforgeError as exc:
        raise APIError(400, str(exc), "invalid_request_error", "name") from None
    try:
        resident = await engine.load_adapter(name, req.pinned, registered=req.path is not None)
    except Exception as exc:
        # The failure stays remembered (requests waiting for this adapter read it from there).
        raise from_engine_error(exc) from None
    return p.AdapterStatus(id=name, resident=resident, pinned=req.pinned).dump()


@router.delete("/v1/adapters/{name:path}", response_model=p.AdapterDeleted)
async def unload_adapter(name: str, engine: AsyncEngine = Depends(get_engine)):
    try:
        known = await engine.unload_adapter(name)
    except AdapterInUseError as exc:
        raise from_engine_error(exc) from None
    if not known:
        raise APIError(
            404, f"adapter '{name}' is not loaded", "invalid_request_error", "name", "model_not_found"
        )
    return p.AdapterDeleted(id=name).dump()
