"""Where adapters come from, by name: explicit local paths, folders of the registry directory (the folder
name is the adapter name), then Hugging Face hub ids (`org/name`, only where the operator allowed them)."""

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from loraforge.errors import ModelNotFoundError
from loraforge.serve.limits import ServeLimits
from loraforge.serve.lora.adapter_file import AdapterError
from loraforge.serve.lora.hub import HubFetcher

NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")


@dataclass(frozen=True)
class AdapterRef:
    """An adapter name checked against its sources once for a request (`AdapterManager.resolve`)."""

    name: str
    local: bool  # provided by the operator (explicit path or registry folder), not a hub id


def is_hub_id(name: str) -> bool:
    return bool(HUB_ID.match(name)) and ".." not in name.split("/")


class AdapterSources:
    """The names an adapter manager can provide and the folder each one is read from."""

    def __init__(self, registry_dir: Path | None, limits: ServeLimits, hub: HubFetcher) -> None:
        self.registry = Path(registry_dir).resolve() if registry_dir else None
        self.limits, self.hub = limits, hub
        self.explicit: dict[str, Path] = {}
        self.lock = threading.Lock()

    def register(self, name: str, path: Path) -> None:
        """Make an adapter at an explicit local path available under `name`."""
        if not NAME.match(name):
            raise AdapterError(f"invalid adapter name '{name}' (letters, digits, '.', '_', '-')")
        path = Path(path).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"adapter path '{path}' has no adapter_config.json")
        with self.lock:
            self.explicit[name] = path

    def unregister(self, name: str) -> None:
        """Forget the explicit path of `name`."""
        with self.lock:
            self.explicit.pop(name, None)

    def locate(self, name: str) -> Path | None:
        """The local folder of adapter `name`, or None when it is a hub id; raises if it cannot exist."""
        if name in self.explicit:
            return self.explicit[name]
        if is_hub_id(name):
            if not self.limits.allow_hub_adapters:
                raise ModelNotFoundError(
                    f"unknown model or adapter '{name}' (adapters from the Hugging Face Hub are off on this "
                    "server; its operator can allow them with --allow-hub-adapters)"
                )
            return None
        if not NAME.match(name) or name in {".", ".."}:
            raise ModelNotFoundError(f"invalid adapter name '{name}'")
        if self.registry is not None:
            path = (self.registry / name).resolve()
            # A symlink inside the registry may not point outside it.
            if not path.is_relative_to(self.registry):
                raise ModelNotFoundError(f"adapter '{name}' escapes the adapter directory")
            if (path / "adapter_config.json").is_file():
                return path
        raise ModelNotFoundError(f"unknown model or adapter '{name}'")

    def exists(self, name: str) -> bool:
        try:
            self.locate(name)
            return True
        except ModelNotFoundError:
            return False

    def names(self) -> set[str]:
        """The explicit names and the registry's adapter folders (hub ids are not listed)."""
        with self.lock:
            names = set(self.explicit)
        if self.registry is not None and self.registry.is_dir():
            names |= {p.name for p in self.registry.iterdir() if (p / "adapter_config.json").is_file()}
        return names

    def fetch(self, name: str) -> Path:
        """The folder to read `name` from, downloading a hub id first (worker threads only)."""
        path = self.locate(name)
        return path if path is not None else self.hub.fetch(name)
