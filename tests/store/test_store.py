"""Writing calls, idempotent replay inserts, feedback linked to calls; and the price table."""

import pytest

from loraforge.cost.prices import PriceTable
from loraforge.errors import ConfigError
from loraforge.store import CallNotFoundError
from tests.store.calls import chat_call


def test_calls_round_trip_with_json_bodies_and_tags(store):
    record = chat_call("qa", "what is 2+2? ünïcode", "4")
    record["tags"] = {"user": "u1", "n": 3}
    store.insert_calls([record])
    call = store.get_call(record["id"])
    assert call.task == "qa" and call.tags == {"user": "u1", "n": 3}
    assert call.request_body["messages"][0]["content"] == "what is 2+2? ünïcode"
    assert call.response_body["choices"][0]["message"]["content"] == "4"
    assert call.time == record["time"]
    assert [c.id for c in store.calls(task="qa")] == [record["id"]]


def test_insert_calls_is_all_or_nothing(store):
    a, b = chat_call("t", "a", "x"), chat_call("t", "b", "y")
    b["id"] = a["id"]  # duplicate primary key inside one batch
    with pytest.raises(Exception):  # noqa: B017 - the dialects raise different IntegrityErrors
        store.insert_calls([a, b])
    assert store.count_calls() == 0


def test_insert_missing_calls_skips_known_ids(store):
    a, b = chat_call("t", "a", "x", seq=1), chat_call("t", "b", "y", seq=2)
    store.insert_calls([a])
    spooled_a = {**a, "time": a["time"].isoformat()}  # the spool's JSON form
    assert store.insert_missing_calls([spooled_a, b, b]) == 1
    assert store.count_calls() == 2
    assert store.insert_missing_calls([a, b]) == 0


def test_feedback_is_linked_to_its_call(store):
    record = chat_call("t", "q", "bad answer")
    store.insert_calls([record])
    store.add_feedback(record["id"], score=0.2, comment="wrong")
    store.add_feedback(record["id"], corrected_output="good answer")
    feedback = store.feedback_for(record["id"])
    assert [(f.score, f.corrected_output, f.comment) for f in feedback] == [
        (0.2, None, "wrong"),
        (None, "good answer", None),
    ]
    with pytest.raises(CallNotFoundError):
        store.add_feedback("call_missing", score=1)


def test_feedback_with_nul_characters_is_stored_or_not_found_never_an_error(store):
    record = chat_call("t", "q", "a")
    store.insert_calls([record])
    store.add_feedback(record["id"], corrected_output="fixed\x00answer", comment="\x00")
    assert store.feedback_for(record["id"])[0].corrected_output.startswith("fixed")
    with pytest.raises(CallNotFoundError):
        store.add_feedback("call_\x00", score=1)


def test_price_table_defaults_prefixes_and_overrides(tmp_path, monkeypatch):
    table = PriceTable.load()
    assert table.taken  # the shipped prices say when they were taken
    assert table.estimate("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(
        table.lookup("gpt-4o-mini").input_per_1m
    )
    assert table.estimate("my-local-model", 10, 10) is None
    assert table.estimate("gpt-4o", None, 10) is None

    user = tmp_path / "prices.yaml"
    user.write_text("taken: '2030-01-01'\nmodels:\n  my-local-model: {input: 1.0, output: 3.0}\n")
    monkeypatch.setenv("LORAFORGE_PRICES", str(user))
    table = PriceTable.load()
    assert table.taken == "2030-01-01"
    assert table.estimate("my-local-model", 1_000_000, 1_000_000) == pytest.approx(4.0)
    assert table.lookup("gpt-4o") is not None  # defaults survive an override

    user.write_text("models:\n  broken: {input: cheap}\n")
    with pytest.raises(ConfigError, match="models.broken"):
        PriceTable.load()


def test_nul_characters_and_long_model_names_are_stored(store):
    record = chat_call("t", "nul \x00 inside", "out \x00 put")
    record["requested_model"] = "m" * 300
    store.insert_calls([record])
    call = store.get_call(record["id"])
    assert call.requested_model == "m" * 200
    content = call.request_body["messages"][0]["content"]
    assert content in ("nul \x00 inside", "nul \ufffd inside")  # PostgreSQL cannot hold NUL


@pytest.mark.postgres
def test_a_gateway_store_bounds_postgres_statements_keeping_the_urls_options(tmp_path):
    """statement_timeout (PostgreSQL's) comes on top of the libpq options given in the URL."""
    from sqlalchemy import text

    from loraforge.store import Store
    from tests.store.backends import store_url_for

    base = store_url_for("postgres", tmp_path)
    url = base + ("&" if "?" in base else "?") + "options=-c%20lock_timeout%3D7000"
    bounded = Store(url, statement_timeout_s=1.5)
    with bounded.db.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "1500ms"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "7s"
    bounded.close()
