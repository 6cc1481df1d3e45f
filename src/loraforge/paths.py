"""Where loraforge keeps its state on disk."""

import os
from pathlib import Path


def loraforge_home() -> Path:
    """Root of caches and stores: `$LORAFORGE_HOME`, else `~/.cache/loraforge`."""
    home = os.environ.get("LORAFORGE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "loraforge"


def model_cache_dir() -> Path:
    return loraforge_home() / "models"
