"""Everything `loraforge serve` builds a server from, as one picklable value: the single-process server
builds it in place, and each Ray Serve replica (`serve --ray`) builds its own from the same value."""

from dataclasses import dataclass, field
from pathlib import Path

from loraforge.serve.engine import EngineConfig
from loraforge.serve.limits import ServeLimits


@dataclass(frozen=True)
class ServerSpec:
    engine: EngineConfig
    max_waiting: int = 256
    adapters: dict[str, Path] = field(default_factory=dict)  # --adapter NAME=DIR
    api_key: str | None = None
    admin_api_key: str | None = None
    adapter_root: Path | None = None

    @property
    def limits(self) -> ServeLimits:
        return self.engine.limits

    def build(self):
        """(AsyncEngine, FastAPI app): the model loaded, the app ready to start (its lifespan starts the
        engine)."""
        from loraforge.serve.api import create_app
        from loraforge.serve.engine.async_engine import AsyncEngine

        engine = AsyncEngine(self.engine, max_waiting=self.max_waiting)
        for name, path in self.adapters.items():
            engine.register_adapter(name, path)
        app = create_app(
            engine, api_key=self.api_key, admin_api_key=self.admin_api_key, adapter_root=self.adapter_root
        )
        return engine, app
