"""`loraforge deploy ray FILE.yaml`: a Ray Serve deployment of the server, declared in a file.

The file holds what `loraforge serve --ray` takes as flags, under the flags' names without dashes
(`adapter_dir`, `max_adapters_per_replica`, ...): the server's part is `ServerSettings` itself
(serve/spec.py), so flags and file are validated and turned into a ServerSpec by the same code. API keys
are never written in the file; it names the environment variables that hold them.
"""

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loraforge.config.loading import format_validation_error, read_yaml_mapping
from loraforge.errors import ConfigError
from loraforge.serve.ray_serve.options import RayServeOptions
from loraforge.serve.spec import (
    ADMIN_API_KEY_ENV,
    API_KEY_ENV,
    HOST,
    PORT,
    ServerSettings,
    ServerSpec,
)

_RAY = RayServeOptions()


class Autoscale(BaseModel):
    """Replicas between `min` and `max` on ongoing requests per replica; `min: 0` scales to zero."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "Autoscale":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        return self


class RayDeployment(ServerSettings):
    """A deployment file: the server's settings plus where and how many replicas run."""

    replicas: int | None = Field(None, ge=1, description=f"fixed replicas (default {_RAY.replicas})")
    autoscale: Autoscale | None = None
    max_adapters_per_replica: int = Field(_RAY.max_adapters_per_replica, ge=1)
    replica_cpus: float = Field(_RAY.replica_cpus, gt=0)
    ray_address: str | None = Field(None, description="an existing cluster; none: start a local one")
    host: str = HOST
    port: int = Field(PORT, ge=0, le=65535)
    api_key_env: str | None = Field(API_KEY_ENV, description="variable holding the key for /v1")
    admin_api_key_env: str | None = Field(ADMIN_API_KEY_ENV, description="variable holding the admin key")

    @model_validator(mode="after")
    def _one_way_to_size(self) -> "RayDeployment":
        if self.replicas is not None and self.autoscale is not None:
            raise ValueError("give replicas or autoscale, not both")
        return self

    def option_name(self, key: str) -> str:
        return key

    def options(self) -> RayServeOptions:
        autoscale = (self.autoscale.min, self.autoscale.max) if self.autoscale is not None else None
        return RayServeOptions(
            replicas=self.replicas or _RAY.replicas,
            autoscale=autoscale,
            max_adapters_per_replica=self.max_adapters_per_replica,
            replica_cpus=self.replica_cpus,
        )

    def server_spec(self, environ: dict[str, str] | None = None) -> ServerSpec:
        """The ServerSpec, with the keys read from the named variables of `environ` (default: os.environ).
        A variable named in the file must be set; the default names may be left unset (no key)."""
        environ = os.environ if environ is None else environ
        keys = []
        for field in ("api_key_env", "admin_api_key_env"):
            name = getattr(self, field)
            if name is not None and field in self.model_fields_set and not environ.get(name):
                raise ConfigError(f"{field}: the environment variable {name} is not set")
            keys.append((environ.get(name) or None) if name is not None else None)
        return self.spec(*keys)

    def summary(self) -> str:
        """One line saying what the deployment starts (for `--check` and the start-up message)."""
        scale = (
            f"autoscale {self.autoscale.min}..{self.autoscale.max}"
            if self.autoscale
            else f"{self.replicas or _RAY.replicas} replica(s)"
        )
        where = f"cluster {self.ray_address}" if self.ray_address else "a local Ray cluster"
        adapters = f"adapters from {self.adapter_dir}" if self.adapter_dir else "no adapter folder"
        return (
            f"{self.model} on {where}: {scale}, {self.max_adapters_per_replica} adapters per replica, "
            f"{adapters}, {len(self.adapters)} named adapter(s), http://{self.host}:{self.port}/v1"
        )


def _relative(path: Path | None, base: Path) -> Path | None:
    """A relative path as it is when it exists from the working directory, else from the file's folder."""
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() or path.exists() else base / path


def load_deployment(path: Path) -> RayDeployment:
    """Read and validate a deployment file; one-line ConfigError for every mistake in it."""
    raw = read_yaml_mapping(path, "deployment", "settings (model, adapter_dir, replicas, ...)")
    try:
        deployment = RayDeployment.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid deployment {path}: {format_validation_error(exc)}") from None
    base = path.parent
    model = Path(deployment.model).expanduser()
    updates: dict = {
        "adapter_dir": _relative(deployment.adapter_dir, base),
        "adapter_root": _relative(deployment.adapter_root, base),
        "adapters": {name: _relative(p, base) for name, p in deployment.adapters.items()},
    }
    if not model.is_absolute() and not model.exists() and (base / model).exists():
        updates["model"] = str(base / model)  # a model folder or .gguf next to the file
    return deployment.model_copy(update=updates)
