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
from loraforge.serve.spec import ServerSpec


def requested_model(body: bytes) -> str | None:
    """The `model` of a JSON request body; None when there is none (the replica answers the error)."""
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return None
    return model if isinstance(model, str) and model else None


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
            self.adapter_loads = 0

        @serve.multiplexed(max_num_models_per_replica=max_adapters)
        async def resident_adapter(self, name: str) -> str:
            """Make `name` resident in this replica's engine (Ray keeps the LRU bookkeeping of which replica
            holds which; the engine's own LRU, bounded by the same count, frees the memory)."""
            self.adapter_loads += 1
            try:
                await self.engine.prepare_adapter(name)
                await self.engine.load_adapter(name)
            except Exception:  # noqa: BLE001 - unknown or broken adapter: the API answers it (404, 400)
                pass
            return name

        async def model_name(self) -> str:
            return self.engine.model_name

        async def handle(self, request: asgi.RequestData, body: bytes):
            """One HTTP request through the app: yields {"status", "headers"}, then body chunks."""
            async with self.started:
                if not self.running:
                    await self.lifespan.startup()
                    self.running = True
            name = serve.get_multiplexed_model_id()
            if name:
                await self.resident_adapter(name)
            header = [(REPLICA_HEADER.encode(), self.replica_id.encode())]
            async for item in asgi.call(self.app, request, body, header):
                yield item

        async def __del__(self) -> None:
            if self.running:
                await self.lifespan.shutdown()

    return EngineReplica


@serve.deployment(name="Ingress", max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS)
class Ingress:
    def __init__(self, replicas, max_body_bytes: int) -> None:
        self.replicas = replicas
        self.max_body_bytes = max_body_bytes
        self.base_model: str | None = None

    async def __call__(self, request: Request) -> StreamingResponse:
        body = await self._body(request)
        model = requested_model(body)
        if model is not None and self.base_model is None:
            self.base_model = await self.replicas.model_name.remote()
        adapter = model if model is not None and model != self.base_model else ""
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
        replica.bind(spec), spec.limits.max_body_bytes
    )
