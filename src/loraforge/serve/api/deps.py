"""FastAPI dependencies: the engine facade, the metrics and the grammar compiler of the app serving the
request."""

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from loraforge.serve.api.metrics import Metrics
from loraforge.serve.engine.async_engine import AsyncEngine
from loraforge.serve.engine.grammar import Grammars


@dataclass(frozen=True)
class AdapterPolicy:
    """Who may change the adapter set, and from where (see adapters.py)."""

    admin_api_key: str | None
    root: Path | None  # adapter paths given at run time must lie under it


def get_engine(request: Request) -> AsyncEngine:
    return request.app.state.engine


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_adapter_policy(request: Request) -> AdapterPolicy:
    return request.app.state.adapter_policy


def get_grammars(request: Request) -> Grammars:
    return request.app.state.grammars
