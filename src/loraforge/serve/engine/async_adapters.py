"""The adapter operations of `AsyncEngine` (register, list, load, unload), each run where it must: the
registry from any thread, installs on the engine thread between steps."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from loraforge.serve.engine.events import AdapterInUseError

if TYPE_CHECKING:
    from loraforge.serve.engine.engine import Engine


class AdapterCommands:
    """Mixed into `AsyncEngine`, which provides `engine` and `run_in_engine`."""

    engine: Engine

    def num_resident_adapters(self) -> int:
        return len(self.engine.adapters.resident)

    def is_resident(self, name: str) -> bool:
        return name in self.engine.adapters.resident

    def register_adapter(self, name: str, path: Path) -> None:
        """Make the adapter at `path` available under `name` (before `start`, or from any thread: the
        manager locks its registry)."""
        self.engine.adapters.register(name, path)

    async def known_adapters(self) -> list[str]:
        return await asyncio.get_running_loop().run_in_executor(None, self.engine.adapters.known)

    async def prepare_adapter(self, name: str, path: Path | None = None) -> None:
        """Before `load_adapter`: with `path`, (re)register `name` there, dropping weights loaded from an
        old path first (on the engine thread, between steps; AdapterInUseError while requests use them);
        without, forget a remembered failure (an explicit load tries again). Raises ModelNotFoundError or
        another LoraforgeError when `name` cannot be loaded at all."""
        manager = self.engine.adapters
        if path is not None:
            if not await self.run_in_engine(lambda: manager.unload(name)):
                raise AdapterInUseError(name)
            manager.register(name, path)
        else:
            manager.forget_failure(name)
        await asyncio.get_running_loop().run_in_executor(None, manager.locate, name)

    async def load_adapter(self, name: str, pinned: bool = False, registered: bool = False) -> bool:
        """Load `name` (on the loader threads) and install it now, so the next request finds it resident;
        returns whether it is resident (False: every resident adapter is in use or pinned). Raises the
        load's error, which stays remembered for the requests waiting for it; `registered`: the path
        `prepare_adapter` registered is forgotten again on failure."""
        manager = self.engine.adapters
        future = manager.start_load(name)
        if future is not None:
            try:
                await asyncio.wrap_future(future)
            except Exception:
                if registered:
                    manager.unregister(name)
                raise
        await self.run_in_engine(manager.install_finished)
        manager.pin(name, pinned)
        return self.is_resident(name)

    async def unload_adapter(self, name: str) -> bool:
        """Drop `name` from memory; False when no such adapter is known. AdapterInUseError while in use."""
        if name not in await self.known_adapters() and not self.is_resident(name):
            return False
        if not await self.run_in_engine(lambda: self.engine.adapters.unload(name)):
            raise AdapterInUseError(name)
        return True
