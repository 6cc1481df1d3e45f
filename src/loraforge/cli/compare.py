"""`loraforge compare`: an adapter head to head with the general model; `compare list` and `compare show`."""

import json
from pathlib import Path

import typer

from loraforge.cli.dataset import STORE_HELP, _open
from loraforge.cli.gateway import key_from_env
from loraforge.cli.main import app
from loraforge.errors import LoraforgeError
from loraforge.fewshot.settings import DEFAULT_K

compare_app = typer.Typer(
    help="Compare a candidate (adapter:NAME, fewshot[:MODEL]) with a baseline (general, ...) on a task.",
    invoke_without_command=True,
)
app.add_typer(compare_app, name="compare")


@compare_app.callback()
def compare(
    ctx: typer.Context,
    task: str | None = typer.Option(None, "--task", help="The task compared."),
    candidate: str | None = typer.Option(
        None, "--candidate", help="adapter:NAME, general, fewshot (general + examples) or fewshot:MODEL."
    ),
    baseline: str = typer.Option(
        "general", "--baseline", help="general, adapter:NAME, fewshot or fewshot:MODEL (e.g. the base)."
    ),
    dataset: str | None = typer.Option(None, "--dataset", help="NAME[:VERSION]: both answer its test split."),
    shadow: bool = typer.Option(False, "--shadow", help="Compare the logged shadow pairs instead."),
    since: str = typer.Option("7d", "--since", help="Shadow pairs since: 7d, 12h or an ISO date (UTC)."),
    upstream_url: str | None = typer.Option(
        None, "--upstream-url", help="The general model's OpenAI base URL."
    ),
    upstream_api_key_env: str | None = typer.Option(None, "--upstream-api-key-env"),
    specialist_url: str | None = typer.Option(
        None, "--specialist-url", help="The adapters' server base URL."
    ),
    specialist_api_key_env: str | None = typer.Option(None, "--specialist-api-key-env"),
    general_model: str | None = typer.Option(
        None, "--general-model", help="Default: the model the task's logged calls ask for most."
    ),
    judge_url: str | None = typer.Option(None, "--judge-url", help="OpenAI base URL of a judge model."),
    judge_model: str | None = typer.Option(None, "--judge-model"),
    judge_api_key_env: str | None = typer.Option(None, "--judge-api-key-env"),
    gate: str | None = typer.Option(None, "--gate", help='e.g. "accuracy>=baseline-0.01 and win_rate>=0.5".'),
    kind: str | None = typer.Option(
        None, "--kind", help="text | classification | json (default: the route's)."
    ),
    labels: Path | None = typer.Option(None, "--labels", help="Label set: JSON list or one per line."),
    json_schema: Path | None = typer.Option(None, "--json-schema", help="JSON Schema of the answers."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, help="Answer length limit for both sides."),
    k: int | None = typer.Option(
        None, "--k", help=f"Few-shot sides: examples per prompt (default {DEFAULT_K}), from the train split."
    ),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight per side."),
    hardware_hour_price: float | None = typer.Option(
        None, "--hardware-hour-price", help="USD/hour of the adapters' machine (default: prices.yaml)."
    ),
    hardware: str | None = typer.Option(None, "--hardware", help="A node of prices.yaml's hardware table."),
    prices: Path | None = typer.Option(None, "--prices", help="YAML price table overriding the shipped one."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Exit status: 0 when the gate holds (or there is none), 1 when it does not, 2 on a mistake."""
    if ctx.invoked_subcommand is not None:
        return
    from loraforge.compare.judge import JudgeSettings
    from loraforge.compare.render import render
    from loraforge.compare.run import CompareRequest, run_comparison
    from loraforge.compare.sides import is_fewshot, parse_side
    from loraforge.cost.hardware import hardware_price
    from loraforge.cost.prices import PriceTable
    from loraforge.store.output_spec import parse_output_options

    if task is None or candidate is None:
        raise LoraforgeError(
            "compare needs --task and --candidate adapter:NAME (see `loraforge compare --help`)"
        )
    if shadow and dataset:
        raise LoraforgeError("give either --dataset or --shadow, not both")
    if k is not None and not any(is_fewshot(side) for side in (candidate, baseline)):
        raise LoraforgeError("--k applies to a fewshot side (--candidate/--baseline fewshot[:MODEL]) only")
    if bool(judge_url) != bool(judge_model):
        raise LoraforgeError("--judge-url and --judge-model go together")
    judge = None
    if judge_url:
        judge = JudgeSettings(judge_url, judge_model, key_from_env("--judge-api-key-env", judge_api_key_env))
    spec = parse_output_options(kind, labels, json_schema) if (kind or labels or json_schema) else None
    req = CompareRequest(
        task=task,
        candidate=parse_side(candidate, "--candidate"),
        baseline=parse_side(baseline, "--baseline"),
        dataset=dataset,
        shadow_since=since if shadow else None,
        upstream_url=upstream_url,
        upstream_api_key=key_from_env("--upstream-api-key-env", upstream_api_key_env),
        specialist_url=specialist_url,
        specialist_api_key=key_from_env("--specialist-api-key-env", specialist_api_key_env),
        general_model=general_model,
        judge=judge,
        gate=gate,
        spec=spec,
        max_tokens=max_tokens,
        k=k if k is not None else DEFAULT_K,
        concurrency=concurrency,
    )
    result = run_comparison(
        _open(store), req, PriceTable.load(prices), hardware_price(hardware_hour_price, hardware, prices)
    )
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        render(result)
    raise typer.Exit(1 if result["gate_passed"] is False else 0)


@compare_app.command("list")
def list_(
    task: str | None = typer.Option(None, "--task"),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Saved comparisons."""
    from rich.console import Console
    from rich.table import Table

    from loraforge.store.comparisons import list_comparisons

    table = Table("id", "time (UTC)", "task", "candidate", "baseline", "source", "items", "gate", "passed")
    for c in list_comparisons(_open(store), task):
        passed = "-" if c.gate_passed is None else ("yes" if c.gate_passed else "no")
        table.add_row(
            str(c.id),
            c.time.isoformat(timespec="seconds"),
            c.task,
            c.candidate,
            c.baseline,
            c.source,
            str(c.items),
            c.gate or "-",
            passed,
        )
    Console(width=160).print(table)


@compare_app.command("show")
def show(
    comparison_id: int = typer.Argument(..., help="The comparison's id (see `compare list`)."),
    json_out: bool = typer.Option(False, "--json"),
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """One saved comparison: its table (or JSON), inputs' hash and gate."""
    from loraforge.compare.render import render
    from loraforge.store.comparisons import get_comparison

    row = get_comparison(_open(store), comparison_id)
    result = {**row.result, "id": row.id, "time": row.time.isoformat()}
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    render(result)
    typer.echo(f"inputs sha256 {row.inputs_hash}; saved {row.time.isoformat(timespec='seconds')} UTC")
