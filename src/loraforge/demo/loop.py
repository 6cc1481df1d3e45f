"""`loraforge demo`: the whole loop on the embedded model, no internet.

The "general model" is the embedded base model served by `loraforge serve` and prompted with the intent
list; users are Banking77 questions sent through the gateway with the official `openai` client; reviewers
correct a share of the answers with the true labels. Then `plan` says few-shot, the task is routed to
few-shot, more traffic and corrections come in, `plan` says fine-tune, and the flywheel builds a dataset,
trains, compares, and walks the adapter through shadow → canary → full on live traffic. The final screen
shows the quality table (general vs few-shot vs adapter, held-out, with intervals), the route history and
the cost report.
"""

import shutil
import time
from itertools import islice
from pathlib import Path

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from loraforge.demo.processes import Children, free_port
from loraforge.demo.traffic import LABELS, Outcome, Users, questions
from loraforge.errors import ConfigError
from loraforge.flywheel.plan import make_plan
from loraforge.flywheel.policy import load_policy
from loraforge.flywheel.records import list_runs
from loraforge.flywheel.turn import run_once
from loraforge.store import Store
from loraforge.store.routes import route_history, set_route

TASK = "support-intents"
# Traffic per phase: enough reviewed examples to move the plan from few-shot to fine-tuning, and enough
# live calls to pass each rollout stage's `min_calls` in the demo policy.
PROTOTYPE_CALLS = 60
FEWSHOT_CALLS = 200
REVIEW_SHARE = 0.7
# The stand-in general model is priced like gpt-4o-mini, so the cost report reads like a real switch.
GENERAL_PRICE = {"input": 0.15, "output": 0.60}


def run_demo(policy_template: Path, data_dir: Path, out: Path, console: Console) -> None:
    if not (data_dir / "train.jsonl").is_file():
        raise ConfigError(f"Banking77 not found in {data_dir} (run the demo from the project root)")
    started = time.monotonic()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    store_url = f"sqlite:///{out.resolve() / 'store.db'}"
    with Children(out / "logs") as children:
        console.rule("[bold]starting `loraforge serve` (the embedded SmolLM2-135M) and the gateway")
        serve = children.start(
            "serve", ["serve", "--model", "smollm2-135m", "--adapter-root", str(out)], free_port()
        )
        model = httpx.get(f"{serve}/v1/models", timeout=30).json()["data"][0]["id"]
        prices = out / "prices.yaml"
        prices.write_text(yaml.safe_dump({"taken": "demo", "models": {model: GENERAL_PRICE}}))
        gateway = children.start(
            "gateway",
            ["gateway", "--upstream-url", f"{serve}/v1", "--specialist-url", f"{serve}/v1",
             "--store", store_url, "--prices", str(prices), "--route-refresh", "0.5"],
            free_port(),
        )  # fmt: skip
        store = Store(store_url)
        policy = _policy(policy_template, out, serve, model, prices)
        users = Users(gateway, model, TASK, REVIEW_SHARE)
        stream = questions(data_dir, "train")

        _phase(console, f"1. the prototype: {PROTOTYPE_CALLS} calls on the general model")
        _show(console, users.send(list(islice(stream, PROTOTYPE_CALLS))))
        plan = _plan(console, store)
        if plan.recommendation == "fewshot":
            spec = policy.output.spec()
            change = set_route(
                store, TASK, "fewshot", model="general", min_score=1.0, output=spec, actor="demo",
                reason="plan: few-shot",
            )  # fmt: skip
            console.print(f"route → few-shot: {model} shown the 8 most similar good calls (#{change.seq})")
            time.sleep(1.5)  # the gateway re-reads routes every 0.5 s

        _phase(console, f"2. {FEWSHOT_CALLS} more calls; reviewers keep correcting")
        _show(console, users.send(list(islice(stream, FEWSHOT_CALLS))))
        _plan(console, store)

        _phase(console, "3. the flywheel: dataset → train → compare → shadow → canary → full")
        rounds = 0
        while True:
            report = run_once(store, policy, echo=lambda line: console.print(f"  {line}"))
            console.print(f"[bold]flywheel:[/] {report.outcome}: {report.message}")
            rounds += 1
            if report.outcome != "waiting" or rounds > 10:
                break
            time.sleep(1.0)  # the gateway picks up the new route
            _show(console, users.send(list(islice(stream, 40))))
        if report.outcome == "done":
            time.sleep(1.0)  # the gateway picks up the full route
            _phase(console, "4. after the switch: 40 more calls")
            _show(console, users.send(list(islice(stream, 40))))
        _measure_general(console, store, policy)
        _final_screen(console, store, policy, prices, serve, time.monotonic() - started)


def _policy(template: Path, out: Path, serve: str, model: str, prices: Path):
    """The demo's policy: the example policy, pointed at this run's servers and folders."""
    raw = yaml.safe_load(template.read_text())
    raw["task"] = TASK
    raw["train"]["runs_dir"] = str(out / "runs")
    raw["train"]["config"] = str((template.parent / raw["train"]["config"]).resolve())
    raw["serving"] = {"general_url": f"{serve}/v1", "general_model": model, "specialist_url": f"{serve}/v1",
                      "prices_file": str(prices)}  # fmt: skip
    raw["output"] = {"kind": "classification", "labels": list(LABELS)}
    path = out / "policy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_policy(path)


def _phase(console: Console, title: str) -> None:
    console.rule(f"[bold]{title}")


def _show(console: Console, outcomes: list[Outcome]) -> None:
    by_who: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_who.setdefault(o.served_by, []).append(o)
    parts = [f"{who}: {sum(o.correct for o in got)}/{len(got)} right" for who, got in sorted(by_who.items())]
    reviewed = sum(o.reviewed for o in outcomes)
    console.print(f"{len(outcomes)} calls — " + ", ".join(parts) + f"; {reviewed} reviewed")


def _plan(console: Console, store: Store):
    plan = make_plan(store, TASK)
    console.print(f"[bold]plan:[/] {plan.recommendation}")
    for reason in plan.reasons:
        console.print(f"  - {reason}")
    return plan


def _measure_general(console: Console, store: Store, policy) -> None:
    """For the quality table: the general model (no examples) on the held-out split the turn compared on."""
    from loraforge.flywheel.actions import compare

    runs = list_runs(store, TASK)
    if not runs or runs[0].dataset_version is None:
        return
    run = runs[0]
    console.print(f"measuring the general model on dataset v{run.dataset_version}'s held-out split")
    compare(store, policy, "fewshot", "general", f"{run.dataset_name}:{run.dataset_version}", None)


def _final_screen(console: Console, store: Store, policy, prices: Path, serve: str, seconds: float) -> None:
    from loraforge.cli.report import render as render_cost
    from loraforge.cost.hardware import hardware_price
    from loraforge.cost.prices import PriceTable
    from loraforge.cost.report import cost_report
    from loraforge.cost.throughput import scrape_throughput

    console.rule("[bold]the loop, end to end")
    plan = make_plan(store, TASK)
    table = Table(
        "answered by", "accuracy (held-out)", "95% interval", "items", "comparison", title="quality"
    )
    for kind, label in (("general", "general model"), ("fewshot", "few-shot"), ("adapter", "adapter")):
        score = plan.scores.get(kind)
        if score is None:
            table.add_row(label, "not measured", "", "", "")
            continue
        interval = f"[{score.lo:.3f}, {score.hi:.3f}]" if score.lo is not None else ""
        table.add_row(f"{label} ({score.side})", f"{score.value:.3f}", interval, str(score.items),
                      f"#{score.comparison_id}")  # fmt: skip
    console.print(table)
    routes = Table("#", "time (UTC)", "action", "stage", "adapter", "by", "why", title="route history")
    for change in route_history(store, TASK):
        share = f" {change.percent:g}%" if change.stage == "canary" else ""
        when = change.time.isoformat(timespec="seconds")
        routes.add_row(str(change.seq), when, change.action, change.stage + share, change.adapter or "",
                       change.actor, change.reason or "")  # fmt: skip
    console.print(routes)
    for run in list_runs(store, TASK):
        console.print(f"flywheel turn #{run.id}: {run.status} at {run.step} — {run.reason or ''}")
    report = cost_report(
        store,
        PriceTable.load(prices),
        hardware_price(None, None, prices),
        scrape_throughput(f"{serve}/v1", None),
        TASK,
        "1d",
    )
    render_cost(report)
    console.print(f"[bold]whole loop in {seconds / 60:.1f} min[/]; store, runs and logs under {store.url}")
