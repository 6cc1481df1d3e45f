"""Training runs: the list, and one run's curves, config, summary, evaluation and model card; a running
training's progress is re-read every few seconds (htmx polling of a fragment)."""

from fastapi import APIRouter
from markdown_it import MarkdownIt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from loraforge.ui.queries.runs import list_runs, read_json, read_metrics, read_text, resolve_run, run_info
from loraforge.ui.settings import RUN_POLL_S
from loraforge.ui.web import UIError, render, script_json, state

router = APIRouter()
# The model card is our own Markdown, but a run folder may hold anything: raw HTML in it is not rendered.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def render_card(markdown: str) -> str:
    """The model card as HTML, its headings moved under the page's own (h1 becomes h3)."""
    tokens = _markdown.parse(markdown)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + 2)}"
    return _markdown.renderer.render(tokens, _markdown.options, {})


@router.get("/runs")
async def runs_page(request: Request) -> Response:
    root = state(request).settings.runs_dir
    runs = await run_in_threadpool(list_runs, root)
    return render(request, "runs.html", nav="runs", runs=runs, root=root)


def _run(request: Request, run_id: str):
    root = state(request).settings.runs_dir
    path = resolve_run(root, run_id)
    if path is None:
        raise UIError(404, f"no training run {run_id!r} under {root}")
    return run_info(root, path)


def _progress_context(run) -> dict:
    curves = read_metrics(run.path)
    return {"run": run, "curves": script_json(curves), "last": _last(curves), "poll_s": RUN_POLL_S}


def _last(curves: dict) -> dict:
    return {
        "step": curves["train_step"][-1] if curves["train_step"] else None,
        "train_loss": curves["train_loss"][-1] if curves["train_loss"] else None,
        "eval_loss": curves["eval_loss"][-1] if curves["eval_loss"] else None,
        "tokens_per_second": curves["tokens_per_second"][-1] if curves["tokens_per_second"] else None,
    }


@router.get("/runs/{run_id:path}/progress")
async def run_progress(request: Request, run_id: str) -> Response:
    """The curves and latest figures alone: what a running training's page polls."""
    run = await run_in_threadpool(_run, request, run_id)
    context = await run_in_threadpool(_progress_context, run)
    return render(request, "_run_progress.html", nav="runs", **context)


@router.get("/runs/{run_id:path}")
async def run_page(request: Request, run_id: str) -> Response:
    run = await run_in_threadpool(_run, request, run_id)

    def load():
        card = read_text(run.path / "README.md")
        return {
            **_progress_context(run),
            "evaluation": read_json(run.path / "eval.json"),
            "config_text": read_text(run.path / "config.yaml"),
            "card_html": render_card(card) if card else None,
        }

    return render(request, "run.html", nav="runs", **await run_in_threadpool(load))
