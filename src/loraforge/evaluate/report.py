"""Print an evaluation report as a table: base vs each adapter, metric by metric."""

from rich.console import Console
from rich.table import Table


def _flatten(metrics: dict) -> dict[str, float]:
    flat: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": sub for key, sub in value.items()})
        else:
            flat[name] = value
    return flat


def render_report(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    results = {name: _flatten(metrics) for name, metrics in report["results"].items()}
    table = Table(title=f"{report['task']} · {report['split']} split · {report['rows']} rows")
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    compared = [name for name in results if name != "base"] if "base" in results else []
    for name in compared:
        table.add_column(f"Δ ({name} − base)", justify="right")
    metric_names = list(dict.fromkeys(key for metrics in results.values() for key in metrics))
    for metric in metric_names:
        cells = [f"{results[name].get(metric, float('nan')):.4f}" for name in results]
        base = results["base"].get(metric, 0) if compared else 0
        cells += [f"{results[name].get(metric, 0) - base:+.4f}" for name in compared]
        table.add_row(metric, *cells)
    console.print(table)
