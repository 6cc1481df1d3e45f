"""Hyperparameter search over fine-tuning runs (`loraforge tune`), on Optuna."""

from loraforge.tune.search import TuneResult, run_search

__all__ = ["TuneResult", "run_search"]
