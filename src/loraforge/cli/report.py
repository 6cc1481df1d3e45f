"""`loraforge report cost`: spend, savings and latency of tasks by who answered them."""

import json
from pathlib import Path

import typer

from loraforge.cli.dataset import STORE_HELP, _open
from loraforge.cli.gateway import key_from_env
from loraforge.cli.main import app
from loraforge.errors import LoraforgeError

report_app = typer.Typer(help="Reports from the calls logged by the gateway.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("cost")
def cost(
    task: str | None = typer.Option(None, "--task", help="One task (default: every task)."),
    since: str = typer.Option("30d", "--since", help="Window: 30d, 12h or an ISO date (UTC)."),
    hardware_hour_price: float | None = typer.Option(
        None, "--hardware-hour-price", help="USD/hour of the adapters' machine (default: prices.yaml)."
    ),
    hardware: str | None = typer.Option(None, "--hardware", help="A node of prices.yaml's hardware table."),
    specialist_url: str | None = typer.Option(
        None, "--specialist-url", help="The adapters' `loraforge serve`: its /metrics gives the tokens/s."
    ),
    specialist_api_key_env: str | None = typer.Option(None, "--specialist-api-key-env"),
    tokens_per_second: float | None = typer.Option(
        None, "--tokens-per-second", help="The deployment's throughput, when it cannot be read."
    ),
    prices: Path | None = typer.Option(None, "--prices", help="YAML price table overriding the shipped one."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Calls and tokens by who answered, spend, savings so far and projected per month, latency p50/p95."""
    from loraforge.cost.hardware import hardware_price
    from loraforge.cost.prices import PriceTable
    from loraforge.cost.report import cost_report
    from loraforge.cost.throughput import Throughput, scrape_throughput

    throughput = None
    if tokens_per_second is not None:
        if tokens_per_second <= 0:
            raise LoraforgeError(f"--tokens-per-second must be positive, got {tokens_per_second}")
        throughput = Throughput(tokens_per_second, "given with --tokens-per-second")
    elif specialist_url:
        key = key_from_env("--specialist-api-key-env", specialist_api_key_env)
        throughput = scrape_throughput(specialist_url, key)
    report = cost_report(
        _open(store),
        PriceTable.load(prices),
        hardware_price(hardware_hour_price, hardware, prices),
        throughput,
        task,
        since,
    )
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        render(report)


def render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(
        "task", "answered by", "calls", "ok", "prompt tok", "completion tok", "spend $", "p50 ms", "p95 ms",
        title=f"cost since {report['window_start']} UTC ({report['since']})",
    )  # fmt: skip
    for name, t in sorted(report["tasks"].items()):
        for who, row in t["by_who"].items():
            spend = f"{row['spend_usd']:.6f}" + (
                f" (+{row['unpriced_calls']} unpriced)" if row["unpriced_calls"] else ""
            )
            table.add_row(
                name, who, str(row["calls"]), str(row["ok"]), str(row["prompt_tokens"]),
                str(row["completion_tokens"]), spend, _ms(row["latency_p50_ms"]), _ms(row["latency_p95_ms"]),
            )  # fmt: skip
    console.print(table)
    for name, t in sorted(report["tasks"].items()):
        if t["savings_usd"] is None:
            saved = "savings unknown"
        else:
            saved = (
                f"saved ${t['savings_usd']:.6f} so far, projected "
                f"${t['projected_monthly_savings_usd']:.2f}/month at the current mix"
            )
        console.print(f"{name}: spend ${t['spend_usd']:.6f}, {saved} (counterfactual: {t['counterfactual']})")
    total = report["total"]
    console.print(
        f"total: {total['calls']} calls, spend ${total['spend_usd']:.6f}, saved ${total['savings_usd']:.6f}, "
        f"projected ${total['projected_monthly_savings_usd']:.2f}/month",
        style="bold",
    )
    hw, tps = report["hardware"], report["throughput"]
    taken = f", taken {hw['taken']}" if hw["taken"] else ""
    console.print(f"adapters priced at {hw['name']} ${hw['per_hour_usd']:g}/h{taken}", style="dim")
    if tps:
        console.print(f"throughput {tps['tokens_per_s']:.1f} tokens/s ({tps['source']})", style="dim")
    else:
        console.print("no adapter throughput known: adapter calls are left unpriced", style="dim")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
