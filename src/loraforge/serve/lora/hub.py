"""Adapters from the Hugging Face Hub, for servers whose operator allowed them (`--allow-hub-adapters`).

A client names the repository, so every download is bounded: the repository's adapter files must fit in
`hub_max_bytes` (checked from the hub's metadata before anything is fetched), one download may take
`hub_timeout_s` of wall-clock time, and at most `hub_max_downloads` run at once."""

import threading
from collections.abc import Callable
from pathlib import Path

from loraforge.errors import LoraforgeError, ModelNotFoundError
from loraforge.serve.limits import ServeLimits

ADAPTER_FILES = ["adapter_config.json", "*.safetensors"]


class HubBusyError(LoraforgeError):
    """Too many hub downloads are running; the client may retry later (not remembered as a failure)."""


def _matches(filename: str) -> bool:
    return filename == "adapter_config.json" or filename.endswith(".safetensors")


def hub_sizes(repo: str, timeout: float) -> dict[str, int]:
    """Sizes of the adapter files of a hub repository, from its metadata (nothing is downloaded)."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, files_metadata=True, timeout=timeout)
    return {s.rfilename: s.size or 0 for s in info.siblings or [] if _matches(s.rfilename)}


def hub_download(repo: str, timeout: float) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, allow_patterns=ADAPTER_FILES, etag_timeout=timeout))


class HubFetcher:
    """Downloads one adapter repository within the limits; `sizes` and `download` are swappable for tests."""

    def __init__(
        self,
        limits: ServeLimits,
        sizes: Callable[[str, float], dict[str, int]] = hub_sizes,
        download: Callable[[str, float], Path] = hub_download,
    ):
        self.limits, self.sizes, self.download = limits, sizes, download
        self._slots = threading.BoundedSemaphore(limits.hub_max_downloads)

    def fetch(self, repo: str) -> Path:
        lim = self.limits
        if not self._slots.acquire(blocking=False):
            raise HubBusyError(f"{lim.hub_max_downloads} adapter downloads are running; retry '{repo}' later")
        try:
            self._check_size(repo)
        except BaseException:
            self._slots.release()
            raise
        # The download runs on a thread of its own so that a stalled one frees the caller after the
        # timeout; it counts against the download limit until it really ends.
        result: dict[str, object] = {}

        def run() -> None:
            try:
                result["path"] = self.download(repo, lim.hub_timeout_s)
            except Exception as exc:
                result["error"] = exc
            finally:
                self._slots.release()

        thread = threading.Thread(target=run, name=f"hub-download-{repo}", daemon=True)
        thread.start()
        thread.join(lim.hub_timeout_s)
        if thread.is_alive():
            raise ModelNotFoundError(
                f"could not download adapter '{repo}' from the Hugging Face Hub within "
                f"{lim.hub_timeout_s:g} s"
            )
        if "error" in result:
            raise _not_found(repo, result["error"])  # type: ignore[arg-type]
        return result["path"]  # type: ignore[return-value]

    def _check_size(self, repo: str) -> None:
        lim = self.limits
        try:
            sizes = self.sizes(repo, lim.hub_timeout_s)
        except Exception as exc:  # offline, unknown or gated repository: all mean "cannot get it"
            raise _not_found(repo, exc) from None
        if "adapter_config.json" not in sizes:
            raise ModelNotFoundError(f"Hugging Face Hub repository '{repo}' has no adapter_config.json")
        total = sum(sizes.values())
        if total > lim.hub_max_bytes:
            raise ModelNotFoundError(
                f"Hugging Face Hub adapter '{repo}' is {total / 2**20:.1f} MiB, over this server's "
                f"limit of {lim.hub_max_bytes / 2**20:.1f} MiB"
            )


def _not_found(repo: str, exc: BaseException) -> ModelNotFoundError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelNotFoundError(f"could not download adapter '{repo}' from the Hugging Face Hub ({reason})")
