"""Every page against a seeded store on SQLite and PostgreSQL: what it shows, its filters and pages, route
changes and feedback through the forms, and its errors."""

import re

import pytest
from sqlalchemy import func, select

from loraforge.curation.datasets import DatasetFilter, build_dataset
from loraforge.store import Store
from loraforge.store.routes import route_history
from loraforge.store.tables import Call
from loraforge.ui.queries.calls import CallFilter, list_calls
from tests.ui.conftest import ui_client
from tests.ui.seed import TASKS


def csrf_of(client) -> str:
    page = client.get("/task", params={"name": "intent"}).text
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_tasks_page_shows_each_task_with_its_route_verdict_and_data(client):
    page = client.get("/")
    assert page.status_code == 200
    for task in TASKS:
        assert f'href="/task?name={task}"' in page.text
    assert "canary 10%" in page.text and "gate passed" in page.text
    assert re.search(r"good examples</dt><dd>\d+", page.text)


def test_task_page_timeline_links_every_step_of_the_loop(client, seeded):
    page = client.get("/task", params={"name": "intent"}).text
    assert 'href="/datasets/intent-ds/1"' in page and 'href="/datasets/intent-ds/2"' in page
    assert 'href="/runs/intent-v1"' in page
    assert f'href="/comparisons/{seeded.comparison_id}"' in page
    assert "route #2: canary → intent-v1 (10%)" in page and "route #1: shadow → intent-v1" in page


@pytest.mark.parametrize(
    "params, check",
    [
        ({"task": "intent", "served": "adapter"}, lambda c: c.task == "intent" and c.served == "adapter"),
        ({"served": "shadow"}, lambda c: c.served == "shadow"),
        ({"status": "error"}, lambda c: c.status == "error"),
        ({"task": "support", "q": "REFUND"}, lambda c: c.task == "support" and "refund" in c.input),
    ],
)
def test_call_filters(seeded, params, check):
    store = Store(seeded.store_url)
    rows, _ = list_calls(store, CallFilter(**params), limit=200)
    assert rows and all(check(r) for r in rows)


def test_feedback_filters_match_the_store(seeded, client):
    store = Store(seeded.store_url)
    with_fb, _ = list_calls(store, CallFilter(task="intent", feedback="with"), limit=200)
    corrected, _ = list_calls(store, CallFilter(task="intent", feedback="corrected"), limit=200)
    without, _ = list_calls(store, CallFilter(task="intent", feedback="without"), limit=50)
    assert {r.id for r in corrected} < {r.id for r in with_fb}
    assert all(store.feedback_for(r.id) for r in with_fb)
    assert not any(store.feedback_for(r.id) for r in without)


def test_pages_walk_every_call_of_a_task_once_newest_first(seeded, client):
    seen, url = [], "/calls?task=extract&limit=200"
    while url:
        page = client.get(url).text
        seen += re.findall(r'href="/calls/([^"?]+)"', page)
        found = re.search(r'href="([^"]+)" rel="next"', page)
        url = found.group(1).replace("&amp;", "&") if found else None
    with Store(seeded.store_url).db.connect() as conn:
        total = conn.scalar(select(func.count()).where(Call.task == "extract"))
    assert len(seen) == len(set(seen)) == total


def test_route_change_needs_confirmation_and_lands_in_the_history(client, seeded):
    store = Store(seeded.store_url)
    before = len(route_history(store, "support"))
    form = {"name": "support", "action": "set", "stage": "canary", "adapter": "support-v1", "percent": "25"}
    confirm = client.post("/task/route/confirm", data={**form, "csrf": csrf_of(client)})
    assert confirm.status_code == 200 and "canary → adapter support-v1 (25% of calls)" in confirm.text
    assert len(route_history(store, "support")) == before  # nothing changes before the confirmation
    unconfirmed = client.post("/task/route", data={**form, "csrf": csrf_of(client)})
    assert unconfirmed.status_code == 400
    done = client.post("/task/route", data={**form, "csrf": csrf_of(client), "confirm": "yes"})
    assert done.status_code == 200  # redirected to the task page
    change = route_history(store, "support")[-1]
    assert (change.stage, change.adapter, change.percent) == ("canary", "support-v1", 25.0)
    assert change.actor.startswith("dashboard")
    for action in ("off", "rollback"):  # off, then back to the canary
        data = {"name": "support", "action": action, "csrf": csrf_of(client), "confirm": "yes"}
        assert client.post("/task/route", data=data).status_code == 200
    last = route_history(store, "support")[-1]
    assert (last.action, last.stage, last.adapter) == ("rollback", "canary", "support-v1")


@pytest.mark.parametrize(
    "form, status, message",
    [
        ({"action": "set", "stage": "canary", "adapter": "a", "percent": "150"}, 400, "between 0 and 100"),
        ({"action": "set", "stage": "sideways", "adapter": "a"}, 400, "choose one of shadow"),
        ({"action": "set", "stage": "full", "adapter": "bad name!"}, 400, "not a valid adapter name"),
        ({"action": "off"}, 409, "no route to turn off"),
        ({"action": "explode"}, 400, "action: choose one of"),
    ],
)
def test_bad_route_changes_are_refused_with_a_reason(client, form, status, message):
    resp = client.post(
        "/task/route", data={"name": "extract", "csrf": csrf_of(client), "confirm": "yes", **form}
    )
    assert resp.status_code == status and message in resp.text


def test_forms_without_the_csrf_token_are_refused(client, seeded):
    resp = client.post("/task/route", data={"name": "extract", "action": "off", "confirm": "yes"})
    assert resp.status_code == 403
    resp = client.post(f"/calls/{seeded.shadowed_call}/feedback", data={"score": "5", "csrf": "forged"})
    stored = Store(seeded.store_url).feedback_for(seeded.shadowed_call)
    assert resp.status_code == 403 and not [f for f in stored if f.score == 5.0]


def test_a_correction_from_the_page_goes_into_the_next_dataset_build(client, seeded, tmp_path):
    store = Store(seeded.store_url)
    call = list_calls(store, CallFilter(task="support", status="ok"), limit=1)[0][0]
    resp = client.post(
        f"/calls/{call.id}/feedback",
        data={
            "score": "5",
            "corrected_output": "a corrected answer",
            "comment": "fixed",
            "csrf": csrf_of(client),
        },
    )
    assert resp.status_code == 200 and "Feedback stored" in resp.text and "a corrected answer" in resp.text
    assert store.feedback_for(call.id)[-1].corrected_output == "a corrected answer"
    built = build_dataset(store, "support-ui", DatasetFilter(task="support", use_corrections=True), tmp_path)
    files = (built.path / "train.jsonl").read_text() + (built.path / "test.jsonl").read_text()
    assert '"content": "a corrected answer"' in files


def test_bad_feedback_is_refused_and_nothing_is_stored(client, seeded):
    store = Store(seeded.store_url)
    call_id = list_calls(store, CallFilter(task="extract"), limit=1)[0][0].id
    for form, message in (({"score": "great"}, "not a number"), ({}, "give at least one of")):
        resp = client.post(f"/calls/{call_id}/feedback", data={**form, "csrf": csrf_of(client)})
        assert resp.status_code == 400 and message in resp.text
    assert store.feedback_for(call_id) == []
    assert (
        client.post("/calls/no-such-call/feedback", data={"score": "1", "csrf": csrf_of(client)}).status_code
        == 404
    )


def test_call_page_shows_request_response_and_shadow_twin(client, seeded):
    page = client.get(f"/calls/{seeded.shadowed_call}").text
    assert "Shadow twin: adapter:intent-v1" in page and "Request" in page and "Add feedback" in page
    shadow_id = re.search(r'href="/calls/(shadow-[^"]+)"', page).group(1)
    assert (
        f'shadow answer of <a href="/calls/{seeded.shadowed_call}"' in client.get(f"/calls/{shadow_id}").text
    )


def test_dataset_pages_show_counts_labels_rows_and_the_diff(client, seeded):
    listing = client.get("/datasets").text
    assert "intent-ds" in listing and "vs v1" in listing
    page = client.get("/datasets/intent-ds/2").text
    assert "Rows per label" in page and "card_lost" in page and "use_corrections" in page
    test_rows = client.get("/datasets/intent-ds/1", params={"split": "test"})
    assert test_rows.status_code == 200 and "message" in test_rows.text
    diff = client.get("/datasets/intent-ds/1/diff/2").text
    assert "removed rows" in diff and re.search(r"removed rows</dt><dd>[1-9]", diff)  # low scores dropped
    assert client.get("/datasets/intent-ds/9").status_code == 404


def test_comparison_page_shows_intervals_and_disagreements(client, seeded):
    page = client.get(f"/comparisons/{seeded.comparison_id}").text
    assert "90.0% [85.0, 94.0]" in page and "+10.0% [+4.0, +16.0]" in page
    assert "where is my refund" in page and "<strong>passed</strong>" in page
    assert f"#{seeded.comparison_id}" in client.get("/comparisons", params={"task": "intent"}).text


def test_run_pages_show_curves_evaluation_and_card_and_stay_inside_the_runs_dir(client, seeded):
    assert "intent-v1" in client.get("/runs").text
    page = client.get("/runs/intent-v1").text
    assert "0.3350" in page and "<table>" in page and '"eval_loss": [0.5, 0.43]' in page
    assert client.get("/runs/..%2F..%2Fetc").status_code == 404
    assert client.get("/runs/no-such-run").status_code == 404


def test_bad_query_values_are_a_400_page_not_a_500(client):
    for url in ("/calls?since=yesterday-ish", "/calls?served=robot", "/calls?limit=100000", "/?days=0",
                "/calls?before=garbage"):  # fmt: skip
        assert client.get(url).status_code == 400, url


def test_api_key_is_required_when_set(seeded):
    client = ui_client(seeded, api_key="s3cret")
    assert client.get("/calls").status_code == 401
    redirect = client.get("/calls", headers={"accept": "text/html"}, follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["location"] == "/login?next=%2Fcalls"
    assert client.get("/calls", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/calls", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/login", data={"api_key": "nope"}).status_code == 401
    login = client.post(
        "/login", data={"api_key": "s3cret", "next": "//evil.example"}, follow_redirects=False
    )
    assert login.headers["location"] == "/" and "s3cret" not in login.headers["set-cookie"]
    assert client.get("/calls").status_code == 200  # the session cookie
    assert client.get("/static/app.css").status_code == 200  # static files need no key
