"""The work behind each step of a turn, through the same code as the commands a person would run:
`dataset build`, `train`, `POST /v1/adapters`, `compare`."""

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from loraforge.compare.run import CompareRequest, point_values, run_comparison
from loraforge.compare.sides import FEWSHOT, FEWSHOT_PREFIX, GENERAL
from loraforge.config import load_config
from loraforge.cost.hardware import hardware_price
from loraforge.cost.prices import PriceTable
from loraforge.curation.datasets import BuildResult, DatasetFilter, build_dataset, get_dataset, parse_since
from loraforge.curation.rows import count_candidates
from loraforge.errors import LoraforgeError
from loraforge.flywheel.policy import FlywheelPolicy
from loraforge.flywheel.records import list_runs, runs_on_dataset
from loraforge.gateway.routing import adapter_label
from loraforge.spans import span_seconds
from loraforge.store.routes import FEWSHOT as FEWSHOT_STAGE
from loraforge.store.routes import GENERAL_MODEL, current_routes
from loraforge.store.store import Store
from loraforge.store.tables import FlywheelRun, utcnow
from loraforge.train.checkpoint import latest_checkpoint

REGISTER_TIMEOUT_S = 300.0  # loading an adapter is quick; a cold server may first compile its kernels


def dataset_filter(policy: FlywheelPolicy) -> DatasetFilter:
    d = policy.data
    return DatasetFilter(
        policy.task,
        since=d.since,
        min_score=d.min_score,
        use_corrections=d.use_corrections,
        dedupe=d.dedupe,
        test_fraction=d.test_fraction,
        reviewed_only=d.reviewed_only,
    )


def count_usable(store: Store, policy: FlywheelPolicy) -> int:
    filt = dataset_filter(policy)
    return count_candidates(store, filt, parse_since(filt.since) if filt.since else None)


def trigger_not_met(store: Store, policy: FlywheelPolicy) -> str | None:
    """Why no turn starts now, or None when the trigger holds."""
    usable = count_usable(store, policy)
    runs = list_runs(store, policy.task)
    seen = max((r.examples or 0 for r in runs), default=0)
    new = usable - seen
    need = policy.trigger.min_new_examples
    if new < need:
        return f"{new} new usable examples (of {usable}) since the last dataset; the trigger needs {need}"
    every = span_seconds(policy.trigger.every) if policy.trigger.every else None
    if every and runs:
        since = utcnow() - runs[0].started
        if since < timedelta(seconds=every):
            hours = since.total_seconds() / 3600
            return f"the last turn started {hours:.1f} h ago; every: {policy.trigger.every}"
    return None


def build_version(store: Store, policy: FlywheelPolicy) -> BuildResult:
    return build_dataset(store, policy.dataset_name, dataset_filter(policy))


def runs_on(store: Store, policy: FlywheelPolicy, version: int) -> list[FlywheelRun]:
    return runs_on_dataset(store, policy.task, policy.dataset_name, version)


def run_dir_of(policy: FlywheelPolicy, version: int) -> Path:
    return policy.train.runs_dir / policy.task / f"v{version}"


def adapter_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "adapter"


def train(
    store: Store, policy: FlywheelPolicy, version: int, echo: Callable[[str], None]
) -> tuple[Path, bool]:
    """Train the adapter of dataset `version` (resuming its checkpoint after a crash); (run dir, resumed)."""
    from loraforge.train.run import run_training  # torch and transformers: only when a turn trains

    run_dir = run_dir_of(policy, version)
    if (run_dir / "summary.json").is_file() and (adapter_dir(run_dir) / "adapter_config.json").is_file():
        return run_dir, False  # trained before a crash that came before the step was recorded
    files = Path(get_dataset(store, policy.dataset_name, version).path)
    config = load_config(
        policy.train.config,
        [
            *policy.train.set,
            f"data.train={files / 'train.jsonl'}",
            "data.validation=null",
            "data.test=null",
            "data.max_train_examples=null",
        ],
    )
    resume = latest_checkpoint(run_dir / "checkpoints") is not None
    how = "resuming" if resume else "training"
    echo(f"{policy.task}: {how} on {files / 'train.jsonl'} into {run_dir}")
    run_training(config, run_dir, resume=resume, evaluate=False, show_progress=False)
    return run_dir, resume


def register(policy: FlywheelPolicy, name: str, path: Path) -> None:
    """Load the adapter on the adapters' server (`POST /v1/adapters`), replacing an older load of the name."""
    serving = policy.serving
    key = serving.key("admin") or serving.key("specialist")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    url = serving.specialist_url.rstrip("/") + "/adapters"
    try:
        resp = httpx.post(
            url, json={"name": name, "path": str(path.resolve())}, headers=headers, timeout=REGISTER_TIMEOUT_S
        )
    except httpx.HTTPError as exc:
        raise LoraforgeError(f"cannot register adapter {name} at {url}: {exc}") from exc
    if resp.status_code != 200:
        detail = f"HTTP {resp.status_code} {resp.text[:300]}"
        raise LoraforgeError(f"registering adapter {name} at {url}: {detail}")


def serving_now(store: Store, task: str) -> str:
    """The side that answers the task's calls now (a comparison's baseline): a fully routed adapter,
    few-shot prompting, else the general model."""
    route = current_routes(store).get(task)
    if route is None:
        return GENERAL
    if route.stage == "full":
        return adapter_label(route.adapter)
    if route.stage == FEWSHOT_STAGE:
        return FEWSHOT if route.model == GENERAL_MODEL else f"{FEWSHOT_PREFIX}{route.model}"
    return GENERAL


def compare(
    store: Store, policy: FlywheelPolicy, candidate: str, baseline: str, dataset: str, gate: str | None
) -> dict[str, Any]:
    """`compare` of two sides on a dataset version with the policy's servers, output kind and settings."""
    serving = policy.serving
    req = CompareRequest(
        task=policy.task,
        candidate=candidate,
        baseline=baseline,
        dataset=dataset,
        upstream_url=serving.general_url,
        upstream_api_key=serving.key("general"),
        specialist_url=serving.specialist_url,
        specialist_api_key=serving.key("specialist"),
        general_model=serving.general_model,
        gate=gate,
        spec=policy.output.spec(),
        max_tokens=policy.compare.max_tokens,
        k=policy.compare.k,
        concurrency=policy.compare.concurrency,
    )
    prices = serving.prices_file
    return run_comparison(store, req, PriceTable.load(prices), hardware_price(None, None, prices))


def summarize(result: dict[str, Any]) -> str:
    """The comparison's headline metric, e.g. `accuracy 0.81 vs 0.42 (n=120)`."""
    candidate, baseline = point_values(result)
    for name in ("accuracy", "field_accuracy", "exact_match", "rouge_l", "win_rate"):
        if name in candidate:
            other = f" vs {baseline[name]:.3f}" if name in baseline else ""
            return f"{name} {candidate[name]:.3f}{other} (n={result['items']})"
    return f"n={result['items']}"


def rollout_ids(policy: FlywheelPolicy) -> list[str]:
    """Step names of the rollout: the stage, or STAGE-N for its Nth use (two canaries: canary, canary-2)."""
    ids, seen = [], {}
    for step in policy.rollout:
        seen[step.stage] = seen.get(step.stage, 0) + 1
        ids.append(step.stage if seen[step.stage] == 1 else f"{step.stage}-{seen[step.stage]}")
    return ids
