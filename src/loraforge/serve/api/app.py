"""The OpenAI-compatible HTTP API over the async engine.

`create_app` wires the routers (completions.py: models, completions, chat; adapters.py: the adapter set;
here: health and metrics) to one `AsyncEngine`, the only object the routes talk to (through the
`get_engine` dependency). The event loop only moves bytes: tokenizing, chat templating and file-system
lookups run in the thread pool, the model on the engine thread."""

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse, Response

from loraforge.openai_compat import METRICS_CONTENT_TYPE
from loraforge.serve.api import protocol as p
from loraforge.serve.api.adapters import router as adapter_router
from loraforge.serve.api.auth import key_checker
from loraforge.serve.api.body_limit import BodyLimitMiddleware
from loraforge.serve.api.completions import router as completion_router
from loraforge.serve.api.deps import AdapterPolicy, get_engine, get_metrics
from loraforge.serve.api.errors import install_error_handlers
from loraforge.serve.api.metrics import Metrics
from loraforge.serve.engine.async_engine import AsyncEngine
from loraforge.serve.engine.grammar import Grammars

system_router = APIRouter()


@system_router.get("/health", response_model=p.Health)
async def health(engine: AsyncEngine = Depends(get_engine)):
    if not engine.alive:
        body = p.Health(status="error", model=engine.model_name, error=f"engine stopped: {engine.dead}")
        return JSONResponse(body.dump(), status_code=503)
    return p.Health(status="ok", model=engine.model_name).dump()


@system_router.get("/metrics")
async def prometheus(metrics: Metrics = Depends(get_metrics)):
    return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)


def create_app(
    engine: AsyncEngine,
    api_key: str | None = None,
    admin_api_key: str | None = None,
    adapter_root: Path | None = None,
) -> FastAPI:
    """Build the app; `engine` is started with the app and drained (in-flight requests finish) at shutdown.

    `admin_api_key` guards changes of the adapter set; `adapter_root` confines adapter paths given at run
    time (see serve/api/adapters.py). Limits come from `engine.limits`."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        yield
        await engine.drain()
        engine.close()

    app = FastAPI(title="loraforge", lifespan=lifespan)
    app.state.engine = engine
    app.state.metrics = Metrics(engine, engine.limits.max_metric_models)
    # Structured output: the model's vocabulary and end tokens are fixed once loaded (read-only here).
    app.state.grammars = Grammars(engine.tokenizer, engine.vocab_size, engine.eos_ids)
    root = adapter_root.resolve() if adapter_root is not None else None
    app.state.adapter_policy = AdapterPolicy(admin_api_key, root)
    app.add_middleware(BodyLimitMiddleware, max_bytes=engine.limits.max_body_bytes)
    install_error_handlers(app)
    # With an admin key, every change of the adapter set needs it; without, the serving key.
    admin_check = key_checker(admin_api_key, "admin API key") if admin_api_key else key_checker(api_key)
    app.include_router(adapter_router, dependencies=[Depends(admin_check)])
    app.include_router(system_router)
    app.include_router(completion_router, dependencies=[Depends(key_checker(api_key))])
    return app
