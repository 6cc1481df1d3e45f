"""`POST /v1/adapters` (load, or reload from a new path) and `DELETE /v1/adapters/{name}` (unload).

Loading from a server path is an operator's act: it needs the admin key (`--admin-api-key`), or paths
confined to `--adapter-root`; without either it is off. With an admin key, every change of the adapter
set needs it."""

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from loraforge.errors import LoraforgeError, ModelNotFoundError
from loraforge.serve.api import protocol as p
from loraforge.serve.api.auth import key_checker
from loraforge.serve.api.errors import APIError, from_engine_error
from loraforge.serve.engine.async_engine import AsyncEngine


def _in_use(name: str) -> APIError:
    return APIError(
        409,
        f"adapter '{name}' is serving requests; retry when they finish",
        "invalid_request_error",
        "name",
        "adapter_in_use",
    )


def adapter_routes(
    engine: AsyncEngine, api_key: str | None, admin_api_key: str | None, adapter_root: Path | None
) -> APIRouter:
    manager = engine.engine.adapters
    root = adapter_root.resolve() if adapter_root is not None else None
    check = key_checker(admin_api_key, "admin API key") if admin_api_key else key_checker(api_key)
    router = APIRouter(dependencies=[Depends(check)])

    def allowed_path(raw: str) -> Path:
        if admin_api_key is None and root is None:
            raise APIError(
                403,
                "path: loading adapters from a server path is off; the operator can enable it with "
                "--admin-api-key or --adapter-root",
                "invalid_request_error",
                "path",
                "path_loading_disabled",
            )
        path = Path(raw).expanduser().resolve()
        if root is not None and not path.is_relative_to(root):
            raise APIError(
                403,
                "path: outside the adapter root of this server (--adapter-root)",
                "invalid_request_error",
                "path",
                "path_outside_adapter_root",
            )
        return path

    def register(name: str, raw: str) -> Path:
        path = allowed_path(raw)
        if not (path / "adapter_config.json").is_file():
            raise APIError(
                404,
                f"path: '{raw}' has no adapter_config.json",
                "invalid_request_error",
                "path",
                "model_not_found",
            )
        return path

    @router.post("/v1/adapters")
    async def load_adapter(req: p.AdapterLoadRequest):
        name = req.name
        try:
            if req.path is not None:
                path = await run_in_threadpool(register, name, req.path)
                # A new path for a known name replaces its weights: drop the old ones first (on the engine
                # thread, between steps), which only works while no request uses them.
                if not await engine.run_in_engine(lambda: manager.unload(name)):
                    raise _in_use(name)
                manager.register(name, path)
            else:
                manager.forget_failure(name)  # an explicit load request tries again
            await run_in_threadpool(manager.locate, name)
        except ModelNotFoundError as exc:
            raise APIError(404, str(exc), "invalid_request_error", "name", "model_not_found") from None
        except LoraforgeError as exc:
            raise APIError(400, str(exc), "invalid_request_error", "name") from None
        future = manager.start_load(name)
        if future is not None:
            try:
                await asyncio.wrap_future(future)
            except Exception as exc:
                # The failure stays remembered (requests waiting for this adapter read it from there);
                # only a path registered by this call is forgotten.
                if req.path is not None:
                    manager.unregister(name)
                raise from_engine_error(exc) from None
        # Install now (on the engine thread) so the next request finds it resident.
        await engine.run_in_engine(manager.poll)
        manager.pin(name, req.pinned)
        return {"id": name, "object": "adapter", "resident": name in manager.resident, "pinned": req.pinned}

    @router.delete("/v1/adapters/{name:path}")
    async def unload_adapter(name: str):
        known = await run_in_threadpool(manager.known)
        if name not in known and name not in manager.resident:
            raise APIError(
                404, f"adapter '{name}' is not loaded", "invalid_request_error", "name", "model_not_found"
            )
        if not await engine.run_in_engine(lambda: manager.unload(name)):
            raise _in_use(name)
        return {"id": name, "object": "adapter", "deleted": True}

    return router
