"""Dataset pages: every version; one version's counts, labels, filter and rows; the diff of two versions."""

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from loraforge.curation.datasets import get_dataset
from loraforge.errors import LoraforgeError
from loraforge.ui.queries.datasets import (
    SPLITS,
    corrected_count,
    diff,
    label_counts,
    rows,
    top_labels,
    versions,
)
from loraforge.ui.settings import PAGE_SIZE
from loraforge.ui.web import UIError, render, state, url

router = APIRouter()


@router.get("/datasets")
async def datasets_page(request: Request) -> Response:
    by_name = await run_in_threadpool(versions, state(request).store)
    return render(request, "datasets.html", nav="datasets", by_name=by_name)


def _get(request: Request, name: str, version: int):
    try:
        return get_dataset(state(request).store, name, version)
    except LoraforgeError as exc:
        raise UIError(404, str(exc)) from exc


@router.get("/datasets/{name}/{version}")
async def dataset_page(
    request: Request, name: str, version: int, split: str = "train", offset: int = 0
) -> Response:
    if split not in SPLITS:
        raise UIError(400, f"split: choose one of {', '.join(SPLITS)}")
    if offset < 0:
        raise UIError(400, "offset must not be negative")
    dataset = await run_in_threadpool(_get, request, name, version)
    page, more = await run_in_threadpool(rows, dataset, split, offset, PAGE_SIZE)
    labels, labels_like = top_labels(await run_in_threadpool(label_counts, dataset))
    corrected = await run_in_threadpool(corrected_count, state(request).store, dataset.id)
    others = [
        d
        for d in (await run_in_threadpool(versions, state(request).store)).get(name, [])
        if d.id != dataset.id
    ]
    base = f"/datasets/{name}/{version}"
    return render(
        request,
        "dataset.html",
        nav="datasets",
        d=dataset,
        split=split,
        page=page,
        labels=labels,
        labels_like=labels_like,
        corrected=corrected,
        others=others,
        splits=SPLITS,
        next_url=url(request, base, split=split, offset=offset + PAGE_SIZE) if more else None,
        prev_url=url(request, base, split=split, offset=max(0, offset - PAGE_SIZE)) if offset else None,
    )


@router.get("/datasets/{name}/{version}/diff/{other}")
async def dataset_diff(request: Request, name: str, version: int, other: int) -> Response:
    old, new = sorted(
        [await run_in_threadpool(_get, request, name, v) for v in (version, other)], key=lambda d: d.version
    )
    result = await run_in_threadpool(diff, state(request).store, old, new)
    return render(request, "dataset_diff.html", nav="datasets", old=old, new=new, diff=result)
