"""The serving page: resident adapters, tokens/s, queue and per-adapter requests from `--serve-url`."""

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from loraforge.ui.queries.serving import scrape
from loraforge.ui.settings import RUN_POLL_S
from loraforge.ui.web import render, state

router = APIRouter()


async def _view(request: Request):
    settings = state(request).settings
    if not settings.serve_url:
        return None
    return await run_in_threadpool(scrape, settings.serve_url, settings.serve_api_key)


@router.get("/serving")
async def serving_page(request: Request) -> Response:
    return render(request, "serving.html", nav="serving", view=await _view(request), poll_s=RUN_POLL_S)


@router.get("/serving/figures")
async def serving_figures(request: Request) -> Response:
    return render(request, "_serving.html", nav="serving", view=await _view(request), poll_s=RUN_POLL_S)
