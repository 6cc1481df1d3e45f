"""Turn a model spec — alias, local HF directory, .gguf file or hub id — into a local HF-format directory."""

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from loraforge.errors import ModelNotFoundError
from loraforge.models.aliases import ALIASES, EmbeddedGGUF
from loraforge.models.gguf_convert import convert_gguf
from loraforge.paths import model_cache_dir

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    """A base model ready to load: `path` holds config.json, safetensors weights and tokenizer files."""

    name: str
    path: Path


def _embedded_gguf_path(alias: str, spec: EmbeddedGGUF) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"model '{alias}' needs the package '{spec.package}': install it with `{spec.install_hint}`"
        )
    # Importing the package would pull its declared deps (the `llm` CLI); we only need the file beside it.
    path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    if not path.is_file():
        raise ModelNotFoundError(f"model '{alias}': {path} is missing; reinstall with `{spec.install_hint}`")
    return path


def _convert_cached(gguf_path: Path, cache_name: str) -> Path:
    return convert_gguf(gguf_path, model_cache_dir() / cache_name)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        allow = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
        return Path(snapshot_download(repo_id, allow_patterns=allow))
    except Exception as exc:  # offline, unknown repo, gated repo: all mean "cannot get it"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"could not download '{repo_id}' from the Hugging Face Hub ({reason}). "
            f"Check the id and your network, or pass a local directory, a .gguf file, "
            f"or one of: {', '.join(ALIASES)}"
        ) from None


def resolve_model(spec: str) -> ResolvedModel:
    """Resolve `spec` to a local HF directory, converting GGUF (once) and downloading hub ids as needed."""
    spec = spec.strip()
    if spec in ALIASES:
        gguf = _embedded_gguf_path(spec, ALIASES[spec])
        return ResolvedModel(spec, _convert_cached(gguf, spec))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        return ResolvedModel(path.stem, _convert_cached(path, f"{path.stem}-{digest}"))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"'{spec}' is a directory but has no config.json (not an HF model folder)"
            )
        return ResolvedModel(path.name, path)
    if path.suffix == ".gguf" or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model path '{spec}' does not exist")
    if HUB_ID.match(spec):
        return ResolvedModel(spec, _from_hub(spec))
    raise ModelNotFoundError(
        f"unknown model '{spec}': expected an alias ({', '.join(ALIASES)}), a local HF directory, "
        f"a .gguf file or a Hugging Face hub id like 'org/name'"
    )
