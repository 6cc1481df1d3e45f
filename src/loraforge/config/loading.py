"""Read a YAML config, apply `--set key.path=value` overrides, validate; errors become one clear line."""

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from loraforge.config.schema import FineTuneConfig
from loraforge.errors import ConfigError

PATH_FIELDS = (("data", "train"), ("data", "validation"), ("data", "test"), ("evaluation", "labels"))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`trainer.learning_rate=1e-4` -> (['trainer', 'learning_rate'], 0.0001); values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.path=value, got '{text}'")
    value = yaml.safe_load(raw) if raw.strip() else None
    return key.strip().split("."), value


def apply_override(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: '{'.'.join(keys[: depth + 1])}' is not a section")
        node = child
    node[keys[-1]] = value


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the dotted key."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def _resolve_paths(raw: dict, base_dir: Path) -> None:
    """Relative data paths are taken from the working directory, else from the config file's folder."""
    for section, key in PATH_FIELDS:
        value = (raw.get(section) or {}).get(key) if isinstance(raw.get(section), dict) else None
        relative = isinstance(value, str) and not Path(value).expanduser().is_absolute()
        if relative and not Path(value).exists() and (base_dir / value).exists():
            raw[section][key] = str(base_dir / value)


def validate_config(raw: Any) -> FineTuneConfig:
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping of sections (base_model, data, prompt, ...)")
    try:
        return FineTuneConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {format_validation_error(exc)}") from None


def read_yaml_mapping(path: Path, kind: str, shape: str) -> dict:
    """A YAML file's top-level mapping; ConfigError naming the file for a missing file, bad YAML or another
    shape (`kind`: "config"; `shape`: what the mapping holds, for the message)."""
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the {kind} must be a YAML mapping of {shape}")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> FineTuneConfig:
    """Load and validate a fine-tuning config file with optional `key.path=value` overrides."""
    path = Path(path)
    raw = read_yaml_mapping(path, "config", "sections")
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    _resolve_paths(raw, path.parent)
    return validate_config(raw)


def dump_config(config: FineTuneConfig) -> str:
    """The fully resolved config as YAML (defaults filled in), for the run's output directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
