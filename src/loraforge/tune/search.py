"""One hyperparameter search: trials are fine-tuning runs in this process, compared by their best validation
loss, pruned early when their validation loss trails the other trials' at the same step (Optuna's median
rule), and resumable: the study lives in the store's database (storage.py), and a trial that was running
when the process died is marked failed and queued again with the same parameters."""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraforge.config import validate_config
from loraforge.config.schema import FineTuneConfig, TuneConfig
from loraforge.errors import ConfigError
from loraforge.train.run import run_training
from loraforge.tune.report import write_report


@dataclass
class TuneResult:
    study: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    best_run_dir: Path
    finished: int  # trials complete or pruned, this process and earlier ones
    importances: dict[str, float]


def suggest(trial, space: TuneConfig) -> dict[str, Any]:
    """The trial's parameters from the search space (keys absent where the space keeps the config's value)."""
    params: dict[str, Any] = {}
    if space.learning_rate is not None:
        lr = space.learning_rate
        params["learning_rate"] = trial.suggest_float("learning_rate", lr.low, lr.high, log=lr.log)
    if space.r is not None:
        params["r"] = trial.suggest_categorical("r", space.r)
    if space.epochs is not None:
        params["epochs"] = trial.suggest_int("epochs", space.epochs.low, space.epochs.high)
    if space.dropout is not None:
        params["dropout"] = trial.suggest_float("dropout", space.dropout.low, space.dropout.high)
    return params


def apply_params(config: FineTuneConfig, params: dict[str, Any]) -> FineTuneConfig:
    raw = config.model_dump(mode="json")
    if "learning_rate" in params:
        raw["trainer"]["learning_rate"] = params["learning_rate"]
    if "r" in params:
        raw["adapter"]["r"], raw["adapter"]["alpha"] = params["r"], 2 * params["r"]
    if "epochs" in params:
        raw["trainer"]["epochs"], raw["trainer"]["max_steps"] = params["epochs"], None
    if "dropout" in params:
        raw["adapter"]["dropout"] = params["dropout"]
    return validate_config(raw)


def _requeue_interrupted(study) -> None:
    """A trial still RUNNING when a search starts was cut off (one search per study at a time): fail it and
    queue its parameters again, so the search resumes where it stopped."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        # params it had drawn, or (cut off before drawing them) the ones it had been queued with
        study.enqueue_trial(trial.system_attrs.get("fixed_params", {}) | trial.params, skip_if_exists=False)


def run_search(
    config: FineTuneConfig,
    output_dir: Path,
    *,
    trials: int,
    storage_url: str,
    study_name: str,
    timeout_s: float | None = None,
    show_progress: bool = True,
) -> TuneResult:
    """Run trials until `trials` have finished (complete or pruned) in this study, or `timeout_s` passes."""
    import optuna
    from optuna.trial import TrialState

    if config.trainer.eval_every is None:
        raise ConfigError("tune compares trials by validation loss: set trainer.eval_every")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage_url,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=config.trainer.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=config.trainer.eval_every),
    )
    _requeue_interrupted(study)

    def objective(trial) -> float:
        params = suggest(trial, config.tune)
        run_dir = output_dir / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))

        def report(state) -> None:
            if state.step % config.trainer.eval_every == 0 and state.best_eval_loss is not None:
                trial.report(state.best_eval_loss, state.step)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        run = run_training(
            apply_params(config, params), run_dir, evaluate=False, show_progress=show_progress, on_step=report
        )
        loss = run.summary.training.best_eval_loss
        if loss is None or math.isnan(loss):
            raise ConfigError(
                "tune needs a validation split: set data.validation or data.validation_fraction"
            )
        return loss

    done = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = trials - len(study.get_trials(deepcopy=False, states=done))
    if remaining > 0:
        # A ConfigError is the user's to fix, not a failed trial: it stops the search (catch=() re-raises).
        study.optimize(objective, n_trials=remaining, timeout=timeout_s, catch=())
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise ConfigError(f"study '{study_name}': no trial completed (all pruned or stopped by --timeout)")
    importances = _importances(study)
    best = study.best_trial
    result = TuneResult(
        study=study_name,
        best_trial=best.number,
        best_value=best.value,
        best_params=best.params,
        best_run_dir=Path(best.user_attrs["run_dir"]),
        finished=len(study.get_trials(deepcopy=False, states=done)),
        importances=importances,
    )
    write_report(study, result, output_dir)
    (output_dir / "best.json").write_text(json.dumps(_as_json(result), indent=2) + "\n")
    return result


def _importances(study) -> dict[str, float]:
    """Each parameter's importance for validation loss (Optuna's default evaluator); empty below two
    completed trials, where Optuna would report them all equal."""
    import optuna
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):
        return {}


def _as_json(result: TuneResult) -> dict[str, Any]:
    return {**vars(result), "best_run_dir": str(result.best_run_dir)}
