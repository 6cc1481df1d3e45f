"""The dashboard in a real headless Chromium, mounted in a live gateway (`--ui`) behind an API key:
every page loads without console errors and with labelled controls; filters and pages; a route change
through the form and its confirmation changes what the gateway serves; feedback from the page is stored."""

import os
import time
from pathlib import Path

import httpx
import pytest

from loraforge.store import Store
from loraforge.store.routes import route_history
from tests.gateway.conftest import start_gateway
from tests.gateway.servers import ThreadServer
from tests.gateway.upstream import UpstreamControl, create_upstream
from tests.ui.browser import launch, missing
from tests.ui.seed import seed

KEY = "ui-test-key"
PAGES = ["/", "/task?name=intent", "/calls", "/calls?task=intent&served=adapter", "/datasets",
         "/datasets/intent-ds/2", "/datasets/intent-ds/1/diff/2", "/runs", "/runs/intent-v1", "/comparisons",
         "/comparisons/1", "/serving"]  # fmt: skip
SCREENSHOTS_ENV = "LORAFORGE_UI_SCREENSHOTS"  # a folder: the main pages are saved there as PNG


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A gateway with the dashboard at /ui over a seeded SQLite store, between two scripted upstreams."""
    root = tmp_path_factory.mktemp("ui-live")
    seeded = seed(f"sqlite:///{root / 'store.db'}", root)
    general, specialist = UpstreamControl(reply="balance"), UpstreamControl(reply="refund")
    with ThreadServer(create_upstream(general)) as up, ThreadServer(create_upstream(specialist)) as sp:
        general.url, specialist.url = f"{up.url}/v1", f"{sp.url}/v1"
        _, _, server = start_gateway(
            root, seeded.store_url, general.url, specialist_url=specialist.url, route_refresh_s=0.1,
            api_key=KEY, ui=True, ui_runs_dir=seeded.runs_dir,
        )  # fmt: skip
        with server:
            yield server.url, seeded


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed")
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live):
    """A signed-in page: the login form trades the key for the session cookie."""
    base, _ = live
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    tab = context.new_page()
    tab.errors = []
    tab.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: tab.errors.append(str(e)))
    tab.on("response", lambda r: tab.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    tab.goto(f"{base}/ui/calls")
    assert "/ui/login" in tab.url  # no key, no page
    tab.get_by_label("API key of this dashboard").fill(KEY)
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url("**/ui/calls")
    yield tab
    context.close()


UNLABELLED_CONTROLS = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
  .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label')).map(el => el.name)"""


def test_every_page_loads_without_errors_with_accessible_basics(page, live):
    base, _ = live
    shots = os.environ.get(SCREENSHOTS_ENV)
    for path in PAGES:
        response = page.goto(f"{base}/ui{path}")
        page.wait_for_load_state("load")
        assert response.status == 200, path
        assert page.locator("h1").count() == 1, path
        assert page.evaluate("document.documentElement.lang") == "en"
        assert page.evaluate(UNLABELLED_CONTROLS) == [], path
        for chart in page.locator("[data-chart]").all():  # drawn by uPlot, described for screen readers
            assert chart.get_attribute("aria-label") and chart.locator("canvas").count() == 1, path
        if shots and path in ("/", "/task?name=intent", "/calls", "/runs/intent-v1", "/comparisons/1"):
            name = path.strip("/").split("?")[0].replace("/", "-") or "tasks"
            page.screenshot(path=str(Path(shots) / f"ui-{name}.png"), full_page=False)
    assert page.errors == []


def test_filters_and_pages_in_the_browser(page, live):
    base, _ = live
    page.goto(f"{base}/ui/calls")
    page.get_by_label("Task").select_option("intent")
    page.get_by_label("Answered by").select_option("adapter")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**served=adapter**")
    first = page.locator("tbody tr td:first-child a").all_inner_texts()
    badges = page.locator("tbody .badge").all_inner_texts()
    assert first and all(b == "adapter:intent-v1" for b in badges)
    page.get_by_role("link", name="Older »").click()
    page.wait_for_url("**before=**")
    assert "served=adapter" in page.url
    older = page.locator("tbody tr td:first-child a").all_inner_texts()
    assert older and max(older) <= min(first)


def test_route_change_with_confirmation_changes_what_the_gateway_serves(page, live):
    base, seeded = live
    page.goto(f"{base}/ui/task?name=support")
    page.get_by_label("Stage").select_option("full")
    page.get_by_label("Adapter").fill("support-v1")
    page.get_by_label("Reason").fill("from the browser")
    page.get_by_role("button", name="Change route…").click()
    assert "full → adapter support-v1" in page.locator("main").inner_text()
    assert route_history(Store(seeded.store_url), "support") == []  # not before the confirmation
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**done=**")
    assert "Done: route #1" in page.locator("main").inner_text()
    change = route_history(Store(seeded.store_url), "support")[-1]
    assert (change.stage, change.adapter, change.reason) == ("full", "support-v1", "from the browser")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "refund please"}]}
    deadline, served = time.monotonic() + 5, None
    while served != "adapter:support-v1" and time.monotonic() < deadline:  # the gateway re-reads routes
        headers = {"authorization": f"Bearer {KEY}", "x-loraforge-task": "support"}
        resp = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=10)
        served = resp.headers.get("x-loraforge-served-by")
        time.sleep(0.1)
    assert served == "adapter:support-v1"


def test_feedback_from_the_page_is_stored(page, live):
    base, seeded = live
    page.goto(f"{base}/ui/calls/{seeded.shadowed_call}")
    page.get_by_label("Score").fill("2")
    page.get_by_label("Corrected output").fill("card_lost")
    page.get_by_role("button", name="Save feedback").click()
    page.wait_for_url("**done=feedback")
    assert "card_lost" in page.locator("main").inner_text()
    newest = Store(seeded.store_url).feedback_for(seeded.shadowed_call)[-1]
    assert (newest.score, newest.corrected_output) == (2.0, "card_lost")
