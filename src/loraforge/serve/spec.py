"""Everything `loraforge serve` builds a server from, as one picklable value: the single-process server
builds it in place, and each Ray Serve replica (`serve --ray`) builds its own from the same value.

`ServerSettings` is the user's side of it: the server's options as `loraforge serve`'s flags and
`loraforge deploy ray`'s file both give them (one validation, one translation into a ServerSpec)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loraforge.errors import ConfigError
from loraforge.models import pick_dtype
from loraforge.models.aliases import DEFAULT_MODEL
from loraforge.serve.engine import EngineConfig
from loraforge.serve.limits import WEIGHT_FORMATS, ServeLimits
from loraforge.serve.model.quant import resolve_weights

_ENGINE = EngineConfig()  # the engine's defaults
_LIMITS = ServeLimits()  # the request limits' defaults
MAX_WAITING = 256
HOST, PORT = "127.0.0.1", 8000  # where the server listens by default
# Where the keys are read from (the flags' envvar; a deployment file may name others).
API_KEY_ENV, ADMIN_API_KEY_ENV = "LORAFORGE_API_KEY", "LORAFORGE_ADMIN_API_KEY"


@dataclass(frozen=True)
class ServerSpec:
    engine: EngineConfig
    max_waiting: int = MAX_WAITING
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


class ServerSettings(BaseModel):
    """The server's options, named as `loraforge serve`'s flags (without the dashes); defaults are the
    engine's and serve/limits.py's. Keys are not secrets here: the CLI reads them from flags or the
    environment, a deployment file names environment variables."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    weights: Literal[WEIGHT_FORMATS] = _ENGINE.weights  # serve/model/quant.py
    adapter_dir: Path | None = None
    adapters: dict[str, Path] = Field(default_factory=dict, description="NAME: DIR (--adapter NAME=DIR)")
    adapter_root: Path | None = None
    max_adapters: int = Field(_ENGINE.max_adapters, ge=1)
    max_adapter_mb: int = Field(_ENGINE.max_adapter_bytes >> 20, ge=1)
    max_num_seqs: int = Field(_ENGINE.max_num_seqs, ge=1)
    max_waiting: int = Field(MAX_WAITING, ge=1)
    kv_cache_mb: int = Field(_ENGINE.kv_cache_bytes >> 20, ge=1)
    prefix_cache: bool = _ENGINE.prefix_cache
    threads: int | None = Field(None, ge=1)
    allow_hub_adapters: bool = _LIMITS.allow_hub_adapters
    hub_max_mb: int = Field(_LIMITS.hub_max_bytes >> 20, ge=1)
    hub_timeout: float = Field(_LIMITS.hub_timeout_s, ge=1)
    max_body_bytes: int = Field(_LIMITS.max_body_bytes, ge=1)
    max_prompt_tokens: int | None = Field(_LIMITS.max_prompt_tokens, ge=1)
    max_tokens: int | None = Field(_LIMITS.max_tokens, ge=1)
    max_stop_sequences: int = Field(_LIMITS.max_stop_sequences, ge=0)
    max_stop_chars: int = Field(_LIMITS.max_stop_chars, ge=1)
    max_adapter_rank: int = Field(_LIMITS.max_adapter_rank, ge=1)

    @classmethod
    def from_flags(cls, **flags) -> "ServerSettings":
        """Settings from `loraforge serve`'s flags; a value the flags let through but these refuse is a
        ConfigError naming the flag."""
        try:
            return cls(**flags)
        except ValidationError as exc:
            first = exc.errors()[0]
            flag = "--" + str(first["loc"][0]).replace("_", "-")
            raise ConfigError(f"{flag}: {first['msg']}") from None

    def option_name(self, key: str) -> str:
        """How the user wrote the option `key`, for messages: a flag here, a file key in a file."""
        return "--" + key.replace("_", "-")

    def spec(self, api_key: str | None = None, admin_api_key: str | None = None) -> ServerSpec:
        """The ServerSpec these settings describe; ConfigError for folders that are not there."""
        for key, folder in (("adapter_dir", self.adapter_dir), ("adapter_root", self.adapter_root)):
            if folder is not None and not folder.is_dir():
                raise ConfigError(f"{self.option_name(key)} {folder} is not a directory")
        try:  # a format this machine cannot run fails here, in one line, before the model loads
            resolve_weights(self.weights, pick_dtype(self.precision), "cpu", self.precision)
        except ConfigError as exc:
            raise ConfigError(f"{self.option_name('weights')}: {exc}") from None
        limits = ServeLimits(
            max_body_bytes=self.max_body_bytes,
            max_prompt_tokens=self.max_prompt_tokens,
            max_tokens=self.max_tokens,
            max_stop_sequences=self.max_stop_sequences,
            max_stop_chars=self.max_stop_chars,
            max_adapter_rank=self.max_adapter_rank,
            allow_hub_adapters=self.allow_hub_adapters,
            hub_max_bytes=self.hub_max_mb << 20,
            hub_timeout_s=self.hub_timeout,
        )
        config = EngineConfig(
            model=self.model,
            precision=self.precision,
            weights=self.weights,
            adapter_dir=self.adapter_dir,
            max_adapters=self.max_adapters,
            max_adapter_bytes=self.max_adapter_mb << 20,
            max_num_seqs=self.max_num_seqs,
            kv_cache_bytes=self.kv_cache_mb << 20,
            prefix_cache=self.prefix_cache,
            num_threads=self.threads,
            limits=limits,
        )
        return ServerSpec(
            config, self.max_waiting, dict(self.adapters), api_key, admin_api_key, self.adapter_root
        )
