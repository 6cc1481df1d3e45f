"""The comparison table: each metric for candidate and baseline, and their difference, with 95% intervals."""

from typing import Any

from rich.console import Console
from rich.table import Table

PERCENT_METRICS = {
    "accuracy", "macro_f1", "invalid_rate", "agreement", "valid_json_rate", "schema_valid_rate",
    "field_accuracy", "exact_match", "rouge_l", "win_rate", "error_rate",
}  # fmt: skip


def fmt(name: str, fig: dict[str, float] | None, signed: bool = False) -> str:
    if fig is None:
        return "-"
    if name in PERCENT_METRICS:
        scale, unit, digits = 100, "%", 1
    elif name.startswith("cost"):
        scale, unit, digits = 1, "", 4
    else:
        scale, unit, digits = 1, "", 0
    sign = "+" if signed else ""
    v, lo, hi = (fig[k] * scale for k in ("value", "lo", "hi"))
    return f"{v:{sign}.{digits}f}{unit} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def render(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=150)
    title = (
        f"compare #{result.get('id', '?')}: task {result['task']} — {result['candidate']} vs "
        f"{result['baseline']} on {result['source']}, {result['items']} items ({result['kind']})"
    )
    table = Table("metric", result["candidate"], result["baseline"], "difference", title=title)
    for name, m in result["metrics"].items():
        table.add_row(name, fmt(name, m["candidate"]), fmt(name, m["baseline"]), fmt(name, m["delta"], True))
    console.print(table)
    console.print("95% paired bootstrap intervals in brackets.", style="dim")
    judge = result.get("judge")
    if judge:
        console.print(
            f"judge {judge['model']}: {judge['wins']} wins, {judge['ties']} ties, {judge['losses']} losses "
            f"(two orders per item); {judge['refused_verdicts']} refused and {judge['malformed_verdicts']} "
            f"malformed verdicts, {judge['judge_errors']} judge errors, counted as disagreement (tie)"
        )
    fewshot = result.get("fewshot")
    if fewshot:
        console.print(
            f"few-shot: {fewshot['k']} most similar of {fewshot['examples']} examples from {fewshot['from']}",
            style="dim",
        )
    for role, basis in result.get("cost_basis", {}).items():
        console.print(f"cost of the {role} ({result[role]}): {basis}", style="dim")
    if result.get("gate"):
        verdict = "PASSED" if result["gate_passed"] else "FAILED"
        console.print(
            f"gate {result['gate']!r}: {verdict}", style="bold green" if result["gate_passed"] else "bold red"
        )
