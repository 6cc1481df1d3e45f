"""Run one comparison end to end: gather the items, ask both sides (dataset) or read the logged pairs
(shadow), judge, score, price, apply the gate, and save the result in the store."""

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from loraforge.compare.disagreements import disagreements
from loraforge.compare.fewshot import fewshot_inputs
from loraforge.compare.gate import evaluate_gate, parse_gate
from loraforge.compare.items import Item, dataset_items, inputs_hash, shadow_items
from loraforge.compare.judge import JudgeSettings, judge_all
from loraforge.compare.scoring import score
from loraforge.compare.sides import (
    ADAPTER_PREFIX,
    FEWSHOT_PREFIX,
    GENERAL,
    Answer,
    Side,
    ask_all,
    is_fewshot,
    on_general_upstream,
)
from loraforge.cost.hardware import HardwarePrice, adapter_call_cost
from loraforge.cost.prices import PriceTable
from loraforge.cost.throughput import Throughput, scrape_throughput, throughput_from_calls
from loraforge.errors import LoraforgeError
from loraforge.fewshot.settings import DEFAULT_K, MAX_K
from loraforge.store.comparisons import save_comparison
from loraforge.store.output_spec import OutputSpec
from loraforge.store.routes import route_history
from loraforge.store.store import Store


@dataclass
class CompareRequest:
    task: str
    candidate: str  # "adapter:NAME", "general", "fewshot" or "fewshot:MODEL"
    baseline: str
    dataset: str | None = None  # NAME[:VERSION]
    shadow_since: str | None = None  # compare logged shadow pairs instead
    upstream_url: str | None = None  # the general model's OpenAI base URL
    upstream_api_key: str | None = None
    specialist_url: str | None = None  # the adapters' server
    specialist_api_key: str | None = None
    general_model: str | None = None
    judge: JudgeSettings | None = None
    gate: str | None = None
    spec: OutputSpec | None = None
    max_tokens: int = 64
    k: int = DEFAULT_K  # examples per prompt of a few-shot side
    concurrency: int = 4
    timeout_s: float = 120.0


def run_comparison(
    store: Store, req: CompareRequest, prices: PriceTable, hardware: HardwarePrice
) -> dict[str, Any]:
    """The comparison's result (also saved in the store, with its id under "id")."""
    if req.gate:
        parse_gate(req.gate)  # a typo fails before any model is asked
    if (req.dataset is None) == (req.shadow_since is None):
        raise LoraforgeError("give either --dataset NAME[:VERSION] or --shadow (with --since)")
    if not 1 <= req.k <= MAX_K:
        raise LoraforgeError(f"--k must be between 1 and {MAX_K}, got {req.k}")
    spec = req.spec or task_output_spec(store, req.task)
    general_model = req.general_model or _general_model(store, req.task)
    fewshot: dict[str, Any] | None = None  # the examples a few-shot side was shown
    if req.shadow_since is not None:
        if req.baseline != GENERAL or not req.candidate.startswith(ADAPTER_PREFIX):
            raise LoraforgeError(
                "--shadow compares an adapter (--candidate adapter:NAME) with --baseline general"
            )
        source = shadow_items(store, req.task, req.candidate, req.shadow_since)
    else:
        source = dataset_items(store, req.dataset)
        for role in ("candidate", "baseline"):
            side = _side(req, getattr(req, role), general_model)
            inputs = [item.messages for item in source.items]
            if side.is_fewshot:
                inputs, fewshot = fewshot_inputs(source, req.k)
            answers = asyncio.run(ask_all(side, inputs, req.max_tokens, req.concurrency, req.timeout_s))
            for item, answer in zip(source.items, answers, strict=True):
                setattr(item, role, answer)
    judge_summary = outcomes = None
    if req.judge is not None:
        triples = [(i.messages, i.candidate.text, i.baseline.text) for i in source.items]
        tally = asyncio.run(judge_all(req.judge, triples))
        outcomes, judge_summary = tally.outcomes, {**tally.summary(), "model": req.judge.model}
    costs, basis = {}, {}
    for role in ("candidate", "baseline"):
        label = getattr(req, role)
        costs[role], basis[role] = _costs(req, label, general_model, source.items, role, prices, hardware)
    metrics = score(source.items, spec, costs, outcomes)
    result: dict[str, Any] = {
        "task": req.task,
        "candidate": req.candidate,
        "baseline": req.baseline,
        "general_model": general_model,
        "source": source.description,
        "dataset_hash": source.content_hash,
        "kind": spec.kind,
        "items": len(source.items),
        "inputs_hash": inputs_hash(source.items),
        "metrics": {
            name: {k: f.to_json() if f else None for k, f in m.items()} for name, m in metrics.items()
        },
        "judge": judge_summary,
        "fewshot": fewshot,
        "cost_basis": basis,
        "gate": req.gate,
        "gate_passed": None,
        "disagreements": disagreements(source.items),
    }
    if req.gate:
        result["gate_passed"] = evaluate_gate(req.gate, *point_values(result))
    result["id"] = save_comparison(store, result).id
    return result


def point_values(result: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(candidate, baseline) point estimates of every measured metric."""
    candidate, baseline = {}, {}
    for name, m in result["metrics"].items():
        candidate[name] = m["candidate"]["value"]
        if m.get("baseline"):
            baseline[name] = m["baseline"]["value"]
    return candidate, baseline


def task_output_spec(store: Store, task: str) -> OutputSpec:
    """What a valid answer of the task is, from its newest route that says (else free text)."""
    for change in reversed(route_history(store, task)):
        if change.output:
            return OutputSpec.from_json(change.output)
    return OutputSpec()


def _general_model(store: Store, task: str) -> str | None:
    """The model the task's clients ask the general API for most often."""
    calls = store.calls(task=task)
    counts = Counter(c.requested_model for c in calls if c.requested_model and not c.shadow_of)
    return counts.most_common(1)[0][0] if counts else None


def _side(req: CompareRequest, label: str, general_model: str | None) -> Side:
    if on_general_upstream(label):
        if not req.upstream_url:
            raise LoraforgeError(
                "--upstream-url (the general model's API) is needed to ask the general model"
            )
        if not general_model:
            raise LoraforgeError(f"--general-model is needed: no logged call of task {req.task!r} names one")
        return Side(label, req.upstream_url, general_model, req.upstream_api_key)
    if not req.specialist_url:
        raise LoraforgeError(
            "--specialist-url (the server hosting the adapters) is needed to ask an adapter or fewshot:MODEL"
        )
    prefix = FEWSHOT_PREFIX if is_fewshot(label) else ADAPTER_PREFIX
    return Side(label, req.specialist_url, label[len(prefix) :], req.specialist_api_key)


def _costs(
    req: CompareRequest,
    label: str,
    general_model: str | None,
    items: list[Item],
    role: str,
    prices: PriceTable,
    hardware: HardwarePrice,
) -> tuple[np.ndarray | None, str]:
    """Per-item USD of one side and how it was priced (None: it cannot be priced, and the report says why)."""
    answers: list[Answer] = [getattr(item, role) for item in items]
    if on_general_upstream(label):
        price = prices.lookup(general_model)
        if price is None:
            return None, f"no price for {general_model!r} in the price table"
        costs = [prices.estimate(general_model, a.prompt_tokens, a.completion_tokens) for a in answers]
        if any(c is None for c, a in zip(costs, answers, strict=True) if a.text is not None):
            return None, "the general model reported no token usage"  # failed calls cost nothing
        return np.array([c or 0.0 for c in costs]), f"{general_model} token prices (taken {prices.taken})"
    throughput = _throughput(req, answers)
    if throughput is None:
        return None, "no throughput measured for the adapter's server"
    costs = [adapter_call_cost(a.tokens or 0, throughput.tokens_per_s, hardware) for a in answers]
    basis = f"{hardware.describe()} at {throughput.tokens_per_s:.1f} tokens/s ({throughput.source})"
    return np.array(costs), basis


def _throughput(req: CompareRequest, answers: list[Answer]) -> Throughput | None:
    if req.specialist_url:
        try:
            measured = scrape_throughput(req.specialist_url, req.specialist_api_key)
        except LoraforgeError:
            measured = None  # not a loraforge serve: fall back to the answers' own timing
        if measured is not None:
            return measured
    tokens = sum(a.tokens or 0 for a in answers if a.text is not None)
    seconds = sum(a.latency_ms for a in answers if a.text is not None) / 1000
    return throughput_from_calls(tokens, seconds)
