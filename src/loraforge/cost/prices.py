"""Per-model token prices from a YAML table (shipped defaults + a user file) and cost estimates."""

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from loraforge.errors import ConfigError
from loraforge.paths import loraforge_home

DEFAULT_PRICES = Path(__file__).with_name("prices.yaml")
PRICES_ENV = "LORAFORGE_PRICES"


@dataclass(frozen=True)
class Price:
    input_per_1m: float
    output_per_1m: float


class PriceTable:
    """Model name -> Price; a name matches exactly or by its longest listed prefix."""

    def __init__(self, prices: dict[str, Price], taken: str | None = None) -> None:
        self.prices = prices
        self.taken = taken

    @classmethod
    def load(cls, user_file: Path | None = None) -> "PriceTable":
        """Shipped defaults updated by `user_file` / `$LORAFORGE_PRICES` / `$LORAFORGE_HOME/prices.yaml`."""
        prices: dict[str, Price] = {}
        taken = None
        for path in price_files(user_file):
            more, more_taken = _read(path)
            prices.update(more)
            taken = more_taken or taken
        return cls(prices, taken)

    def lookup(self, model: str | None) -> Price | None:
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        matches = [name for name in self.prices if model.startswith(name)]
        return self.prices[max(matches, key=len)] if matches else None

    def estimate(
        self, model: str | None, prompt_tokens: int | None, completion_tokens: int | None
    ) -> float | None:
        """Estimated USD cost of a call, or None when the model has no price or tokens are unknown."""
        price = self.lookup(model)
        if price is None or prompt_tokens is None or completion_tokens is None:
            return None
        return (prompt_tokens * price.input_per_1m + completion_tokens * price.output_per_1m) / 1_000_000


def price_files(user_file: Path | None = None) -> list[Path]:
    """The price files in the order they apply: the shipped table, then the user's (when there is one)."""
    if user_file is None:
        env = os.environ.get(PRICES_ENV)
        user_file = Path(env) if env else loraforge_home() / "prices.yaml"
        if not env and not user_file.exists():
            return [DEFAULT_PRICES]
    return [DEFAULT_PRICES, Path(user_file)]


def read_yaml(path: Path) -> dict:
    """A price file's mapping; ConfigError when it is missing or not YAML."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"price table {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"price table {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"price table {path}: expected a mapping at the top level")
    return data


def _read(path: Path) -> tuple[dict[str, Price], str | None]:
    data = read_yaml(path)
    models = data.get("models")
    if not isinstance(models, dict) and not (path != DEFAULT_PRICES and "hardware" in data):
        raise ConfigError(f"price table {path}: expected a `models:` mapping of name -> {{input, output}}")
    prices: dict[str, Price] = {}
    for name, entry in (models or {}).items():
        try:
            prices[str(name)] = Price(float(entry["input"]), float(entry["output"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"price table {path}: models.{name} needs numeric `input` and `output` (USD per 1M tokens)"
            ) from exc
    taken = data.get("taken")
    return prices, str(taken) if taken is not None else None
