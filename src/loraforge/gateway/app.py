"""The gateway's ASGI app: OpenAI-compatible routes, feedback, health, metrics, models pass-through."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from loraforge.cost.prices import PriceTable
from loraforge.gateway.errors import GatewayError, json_response, upstream_error, upstream_status_error
from loraforge.gateway.fewshot import FewShotIndexes
from loraforge.gateway.metrics import GatewayMetrics
from loraforge.gateway.proxy import Proxy
from loraforge.gateway.router import Router, RouteTable
from loraforge.gateway.settings import GatewaySettings
from loraforge.gateway.upstream import UpstreamClient, UpstreamError
from loraforge.gateway.validation import TASK_HEADER, parse_feedback, parse_request
from loraforge.openai_compat import METRICS_CONTENT_TYPE, bearer_matches, render_metrics
from loraforge.store.recorder import Recorder
from loraforge.store.spool import Spool
from loraforge.store.store import CallNotFoundError, Store, StoreUnavailableError

log = logging.getLogger("loraforge.gateway")


def create_app(settings: GatewaySettings) -> FastAPI:
    """Build the app; opening the store is deferred to startup, where a down store only means spooling."""
    store = Store(
        settings.store_url,
        busy_timeout_s=settings.store_busy_timeout_s,
        sqlite_sync=settings.sqlite_sync,
        statement_timeout_s=settings.record_timeout_s,
        migrate=False,
    )
    prices = PriceTable.load(settings.prices_file)
    metrics = GatewayMetrics(settings.max_task_labels)
    spool = Spool(settings.resolved_spool_path())
    recorder = Recorder(
        store,
        spool,
        retry_interval_s=settings.retry_interval_s,
        on_batch=metrics.on_batch,
        timeout_s=settings.record_timeout_s,
        max_queued=settings.max_queued_records,
    )
    upstream = UpstreamClient(settings.upstream_url, settings.timeout_s, settings.connect_timeout_s)
    proxy = Proxy(upstream, recorder, prices, metrics)
    specialist = None
    if settings.specialist_url:
        specialist = UpstreamClient(settings.specialist_url, settings.timeout_s, settings.connect_timeout_s)
    routes = RouteTable(store, settings.route_refresh_s)
    fewshot = FewShotIndexes(store, routes, settings.fewshot_refresh_s)
    router = Router(
        proxy, routes, specialist, settings.specialist_api_key, settings.shadow_concurrency, fewshot
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            # Bounded: a hung database must not keep the gateway from serving (it spools meanwhile).
            await asyncio.wait_for(
                asyncio.shield(run_in_threadpool(store.migrate)), settings.record_timeout_s
            )
        except (StoreUnavailableError, TimeoutError) as exc:
            reason = exc if isinstance(exc, StoreUnavailableError) else "the store did not answer in time"
            log.warning("%s; calls are spooled to %s until it is back", reason, spool.path)
        recorder.store_healthy = store.migrated
        metrics.store_healthy.set(1 if store.migrated else 0)
        recorder.start()
        if store.migrated:
            await routes.refresh()  # routed from the first request on
        routes.start()
        fewshot.start()
        try:
            yield
        finally:
            await fewshot.stop()
            await routes.stop()
            await router.aclose()
            await upstream.aclose()
            if specialist is not None:
                await specialist.aclose()
            await run_in_threadpool(recorder.stop)
            store.close()

    app = FastAPI(title="loraforge gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.recorder = recorder
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.routes = routes
    app.state.router = router
    app.state.fewshot = fewshot

    def upstream_headers(request: Request, body: bool = True) -> dict[str, str]:
        headers = {"content-type": "application/json"} if body else {}
        if settings.upstream_api_key:
            headers["authorization"] = f"Bearer {settings.upstream_api_key}"
        elif not settings.api_key and request.headers.get("authorization"):
            # No key of our own on either side: the client's key is meant for the upstream.
            headers["authorization"] = request.headers["authorization"]
        return headers

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 as soon as it exceeds `max_body_bytes` (never read whole first)."""
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def check_auth(request: Request) -> None:
        if not settings.api_key:
            return
        if not bearer_matches(request.headers.get("authorization", ""), settings.api_key):
            raise GatewayError(
                401,
                "Incorrect or missing API key for the loraforge gateway.",
                type="invalid_request_error",
                code="invalid_api_key",
            )

    async def completions(request: Request, endpoint: str) -> Response:
        try:
            check_auth(request)
            parsed = parse_request(
                await read_body(request), endpoint, request.headers.get(TASK_HEADER), settings.max_json_depth
            )
            return await router.forward(parsed, upstream_headers(request))
        except GatewayError as exc:
            if exc.status in (400, 401, 413):
                metrics.requests.labels(endpoint, str(exc.status)).inc()
            return exc.response()

    async def chat_completions(request: Request) -> Response:
        return await completions(request, "chat.completions")

    async def text_completions(request: Request) -> Response:
        return await completions(request, "completions")

    async def models(request: Request) -> Response:
        try:
            check_auth(request)
            resp = await upstream.request("GET", "/models", b"", upstream_headers(request, body=False))
            try:
                content = await resp.read()
            finally:
                resp.close()
        except GatewayError as exc:
            return exc.response()
        except UpstreamError as exc:
            return upstream_error(exc).response()
        if resp.status >= 400:
            return upstream_status_error(resp.status, content).response()
        return Response(content, 200, media_type="application/json")

    async def feedback(request: Request) -> Response:
        try:
            check_auth(request)
            fb = parse_feedback(await read_body(request), settings.max_json_depth)
            try:
                # Bounded like recording: a hung database answers 503, not never.
                add = run_in_threadpool(store.add_feedback, **fb)
                row = await asyncio.wait_for(add, settings.record_timeout_s)
            except CallNotFoundError as exc:
                # File system calls stay off the event loop (a slow disk must not stall every request).
                if recorder.spooling or await run_in_threadpool(spool.has_pending):
                    raise GatewayError(
                        503, "the store is catching up on spooled calls; retry shortly", type="server_error"
                    ) from exc
                raise GatewayError(404, str(exc), param="call_id", code="call_not_found") from exc
            except Exception as exc:  # the database is down
                log.warning("feedback for %s not stored: %s", fb["call_id"], exc)
                raise GatewayError(
                    503, "the store is unavailable; retry shortly", type="server_error"
                ) from exc
        except GatewayError as exc:
            return exc.response()
        return json_response({"object": "feedback", "id": row.id, "call_id": row.call_id}, 201)

    async def health(_: Request) -> Response:
        body = {"status": "ok", "store": "spooling" if recorder.spooling else "ok"}
        return json_response(body)

    async def prometheus(_: Request) -> Response:
        return Response(render_metrics(metrics.registry), media_type=METRICS_CONTENT_TYPE)

    # Plain Starlette routes: no dependency injection on the hot path, bodies are passed through untouched.
    app.router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.router.add_route("/v1/completions", text_completions, methods=["POST"])
    app.router.add_route("/v1/models", models, methods=["GET"])
    app.router.add_route("/v1/feedback", feedback, methods=["POST"])
    app.router.add_route("/health", health, methods=["GET"])
    app.router.add_route("/metrics", prometheus, methods=["GET"])
    if settings.ui:
        mount_ui(app, settings, store)
    return app


def mount_ui(app: FastAPI, settings: GatewaySettings, store: Store) -> None:
    """The dashboard at /ui, on the gateway's store and key; its serving page shows the specialist."""
    from loraforge.ui import UISettings, create_ui_app

    ui = UISettings(
        store_url=settings.store_url,
        api_key=settings.api_key,
        runs_dir=settings.ui_runs_dir,
        serve_url=settings.specialist_url,
        serve_api_key=settings.specialist_api_key,
        warm=True,
    )
    app.mount("/ui", create_ui_app(ui, store))


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"request body exceeds the gateway's limit of {limit} bytes", code="request_too_large"
    )
