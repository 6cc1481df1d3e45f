"""The two Ray Serve deployments behind `loraforge serve --ray`.

`Ingress` (one, the HTTP entry point) reads each request's `model` and relays the request to an
`EngineReplica`, with Ray Serve's multiplexed model id set to the adapter's name: Ray routes it to a replica
that already holds that adapter (model multiplexing), so each adapter lives on few replicas and its requests
are batched together there. Base-model requests carry no id and go to any replica. Each replica runs one
engine behind serve/api's unchanged `create_app`, so the API is the single-process server's, byte for byte.
"""

import asyncio
import json

from ray import serve
from starlette.requests import Request
from starlette.responses import StreamingResponse

from loraforge.serve.ray_serve import asgi
from loraforge.serve.ray_serve.options import (
    INGRESS_MAX_ONGOING_REQUESTS,
    REPLICA_HEADER,
    RayServeOptions,
)
from loraforge.serve.ray_serve.registry import ReplicaAdapters
from loraforge.serve.spec import ServerSpec

ADAPTERS_ROUTE = "/v1/adapters"


def body_field(body: bytes, key: str):
    """A field of a JSON request body; None when there is none (the replica answers the error)."""
    try:
        value = json.loads(body).get(key)
    except (ValueError, AttributeError):
        return None
    return value


def requested_model(path: str, body: bytes) -> str | None:
    """The model (adapter) a request is for: its `model`, or the `name` a POST /v1/adapters loads."""
    model = body_field(body, "name" if path == ADAPTERS_ROUTE else "model")
    return model if isinstance(model, str) and model else None


def adapter_change(request: asgi.RequestData, body: bytes) -> tuple[str, str | None] | None:
    """(name, path) for a POST /v1/adapters that loads from a path, (name, None) for a DELETE; else None."""
    if request.method == "POST" and request.path == ADAPTERS_ROUTE:
        name, path = body_field(body, "name"), body_field(body, "path")
        if isinstance(name, str) and isinstance(path, str):
            return name, path
    elif request.method == "DELETE" and request.path.startswith(ADAPTERS_ROUTE + "/"):
        return request.path.removeprefix(ADAPTERS_ROUTE + "/"), None
    return None


def engine_replica(max_adapters: int):
    """The replica deployment class, its multiplexing bounded to `max_adapters` resident adapters."""

    @serve.deployment(name="EngineReplica")
    class EngineReplica:
        def __init__(self, spec: ServerSpec) -> None:
            self.engine, self.app = spec.build()
            self.replica_id = serve.get_replica_context().replica_id.unique_id
            self.lifespan = asgi.Lifespan(self.app)
            self.started = asyncio.Lock()
            self.running = False
            self.adapter_loads = 0  # requests that found their adapter not resident (one per load)
            self.loading: set[str] = set()
            self.shared = ReplicaAdapters(self.engine)  # adapters registered at run time, on any replica
            self.follower: asyncio.Task | None = None

        @serve.multiplexed(max_num_models_per_replica=max_adapters)
        async def resident_adapter(self, name: str) -> str:
            """Make `name` resident in this replica's engine (Ray keeps the LRU bookkeeping of which replica
            holds which; the engine's own LRU, bounded by the same count, frees the memory)."""
            try:
                await self.shared.sync()  # a name another replica registered moments ago
                await self.engine.prepare_adapter(name)
                await self.engine.load_adapter(name, self.shared.pinned(name))
            except Exception:  # noqa: BLE001 - unknown or broken adapter: the API answers it (404, 400)
                pass
            return name

        def _count_load(self, model: str | None) -> None:
            """Count a load when `model`, an adapter, is not resident here and not being loaded already."""
            if not model or model == self.engine.model_name:
                return
            self.loading = {name for name in self.loading if not self.engine.is_resident(name)}
            if model not in self.loading and not self.engine.is_resident(model):
                self.adapter_loads += 1
                self.loading.add(model)

        async def stats(self) -> dict:
            """How many requests found their adapter not resident here (a load), for ray_scaling.py."""
            return {"replica": self.replica_id, "adapter_loads": self.adapter_loads}

        async def model_name(self) -> str:
            return self.engine.model_name

        async def handle(self, request: asgi.RequestData, body: bytes):
            """One HTTP request through the app: yields {"status", "headers"}, then body chunks."""
            async with self.started:
                if not self.running:
                    await self.lifespan.startup()
                    self.running = True
                    self.follower = asyncio.create_task(self.shared.follow())
            if request.path.startswith((ADAPTERS_ROUTE, "/v1/models")):
                await self.shared.sync()  # the adapter set as every replica sees it
            self._count_load(requested_model(request.path, body))
            name = serve.get_multiplexed_model_id()
            if name:
                await self.resident_adapter(name)
            header = [(REPLICA_HEADER.encode(), self.replica_id.encode())]
            change = adapter_change(request, body)
            async for item in asgi.call(self.app, request, body, header):
                if change is not None and isinstance(item, dict) and item["status"] == 200:
                    # Done here: tell the other replicas before the client hears of it.
                    name, path = change
                    if path is None:
                        await self.shared.forget(name)
                    else:
                        await self.shared.record(name, path, body_field(body, "pinned") is True)
                yield item

        async def __del__(self) -> None:
            if self.follower is not None:
                self.follower.cancel()
            if self.running:
                await self.lifespan.shutdown()

    return EngineReplica


@serve.deployment(name="Ingress", max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS)
class Ingress:
    def __init__(self, replicas, max_body_bytes: int, affinity: bool = True) -> None:
        self.replicas = replicas
        self.max_body_bytes = max_body_bytes
        self.affinity = affinity
        self.base_model: str | None = None

    async def __call__(self, request: Request) -> StreamingResponse:
        body = await self._body(request)
        model = requested_model(request.url.path, body)
        if model is not None and self.base_model is None:
            self.base_model = await self.replicas.model_name.remote()
        adapter = model if self.affinity and model is not None and model != self.base_model else ""
        data = asgi.RequestData(
            method=request.method,
            path=request.url.path,
            query_string=request.url.query.encode(),
            headers=list(request.headers.raw),
            client=(request.client.host, request.client.port) if request.client else None,
        )
        handle = self.replicas.options(stream=True, multiplexed_model_id=adapter)
        stream = handle.handle.remote(data, body)
        start = await stream.__anext__()
        response = StreamingResponse(_rest(stream), status_code=start["status"])
        response.raw_headers = start["headers"]
        return response

    async def _body(self, request: Request) -> bytes:
        """The body, read up to one byte past the replicas' limit: enough for them to answer 413 themselves
        (as the single-process server does) without the ingress buffering an unbounded upload."""
        chunks, size = [], 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                break
        return b"".join(chunks)[: self.max_body_bytes + 1]


async def _rest(stream):
    async for chunk in stream:
        yield chunk


def build_app(spec: ServerSpec, options: RayServeOptions):
    """The Serve application: the ingress bound to the replica deployment."""
    replica = engine_replica(options.max_adapters_per_replica).options(**options.deployment_options())
    return Ingress.options(ray_actor_options={"num_cpus": 0}).bind(
        replica.bind(spec), spec.limits.max_body_bytes, options.affinity
    )
