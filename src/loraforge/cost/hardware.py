"""The hourly price of the machine hosting the adapters: `hardware:` in prices.yaml, or a price given."""

from dataclasses import dataclass
from pathlib import Path

from loraforge.cost.prices import price_files, read_yaml
from loraforge.errors import ConfigError


@dataclass(frozen=True)
class HardwarePrice:
    name: str
    per_hour: float
    taken: str | None  # when the price was taken (None: given on the command line)
    note: str = ""

    def describe(self) -> str:
        when = f", taken {self.taken}" if self.taken else ""
        return f"{self.name} ${self.per_hour:g}/h{when}"


def hardware_price(
    per_hour: float | None = None, node: str | None = None, user_file: Path | None = None
) -> HardwarePrice:
    """`per_hour` when given; else the node named (or the table's default) from the price files."""
    if per_hour is not None:
        if per_hour <= 0:
            raise ConfigError(f"--hardware-hour-price must be positive, got {per_hour}")
        return HardwarePrice("given", per_hour, None)
    nodes: dict[str, dict] = {}
    default = taken = None
    for path in price_files(user_file):
        section = read_yaml(path).get("hardware")
        if section is None:
            continue
        if not isinstance(section, dict) or not isinstance(section.get("nodes", {}), dict):
            raise ConfigError(
                f"price table {path}: `hardware:` needs a `nodes:` mapping of name -> {{per_hour}}"
            )
        nodes.update(section.get("nodes") or {})
        default = section.get("default", default)
        taken = section.get("taken", taken)
    name = node or default
    if name is None or name not in nodes:
        known = ", ".join(sorted(nodes)) or "none"
        raise ConfigError(f"no hardware price for {name!r} in the price table (known: {known})")
    entry = nodes[name]
    try:
        per_hour = float(entry["per_hour"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ConfigError(f"price table: hardware node {name} needs a numeric `per_hour`") from exc
    return HardwarePrice(name, per_hour, str(taken) if taken else None, str(entry.get("note") or ""))


def adapter_call_cost(tokens: int, tokens_per_s: float, price: HardwarePrice) -> float:
    """USD of one call: the share of the machine's hour that its tokens take at the measured throughput."""
    return tokens / tokens_per_s * price.per_hour / 3600
