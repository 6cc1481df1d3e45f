"""Routes and their history in the store: set, off, rollback (undo-like), validation, the current view."""

import pytest

from loraforge.errors import LoraforgeError
from loraforge.store.output_spec import OutputSpec
from loraforge.store.routes import current_routes, rollback_route, route_history, route_off, set_route


def test_history_records_who_when_what_why_and_current_is_the_newest(store):
    set_route(store, "intent", "shadow", "ad1", actor="ana", reason="first look")
    set_route(store, "intent", "canary", "ad1", percent=10, actor="ana", reason="looks good")
    set_route(store, "other", "full", "ad9", fallback=("on-error",), timeout_ms=500, actor="bo")
    routes = current_routes(store)
    assert routes["intent"].stage == "canary" and routes["intent"].percent == 10
    assert routes["other"].fallback == ("on-error",) and routes["other"].timeout_ms == 500
    history = route_history(store, "intent")
    assert [(c.seq, c.action, c.stage, c.actor, c.reason) for c in history] == [
        (1, "set", "shadow", "ana", "first look"),
        (2, "set", "canary", "ana", "looks good"),
    ]
    assert history[0].time <= history[1].time


def test_rollback_restores_the_previous_route_and_walks_back_like_undo(store):
    labels = OutputSpec("classification", ("a", "b"))
    set_route(store, "t", "shadow", "ad1", output=labels)
    set_route(store, "t", "canary", "ad2", percent=25)
    set_route(store, "t", "full", "ad2")
    rollback_route(store, "t", actor="ops", reason="errors up")
    assert current_routes(store)["t"].stage == "canary"
    assert current_routes(store)["t"].adapter == "ad2"
    rollback_route(store, "t")
    route = current_routes(store)["t"]
    assert (route.stage, route.adapter, route.output) == ("shadow", "ad1", labels)
    with pytest.raises(LoraforgeError, match="nothing before"):
        rollback_route(store, "t")
    actions = [c.action for c in route_history(store, "t")]
    assert actions == ["set", "set", "set", "rollback", "rollback"]


def test_off_removes_the_route_and_rollback_brings_it_back(store):
    set_route(store, "t", "full", "ad1")
    route_off(store, "t", reason="incident")
    assert "t" not in current_routes(store)
    with pytest.raises(LoraforgeError, match="no route to turn off"):
        route_off(store, "t")
    rollback_route(store, "t")
    assert current_routes(store)["t"].stage == "full"


@pytest.mark.parametrize(
    "stage, kwargs, message",
    [
        ("canary", {}, "--percent is required"),
        ("canary", {"percent": 100}, "between 0 and 100"),
        ("full", {"percent": 50}, "canary only"),
        ("live", {}, "--stage"),
        ("full", {"fallback": ("on-timeout",)}, "--fallback on-timeout"),
        ("full", {"timeout_ms": 0}, "--timeout-ms"),
    ],
)
def test_invalid_routes_are_refused_and_nothing_is_stored(store, stage, kwargs, message):
    with pytest.raises(LoraforgeError, match=message):
        set_route(store, "t", stage, "ad1", **kwargs)
    assert route_history(store, "t") == []


def test_a_batch_mixing_plain_and_routed_calls_keeps_every_routing_field(store):
    from tests.store.calls import chat_call

    plain = chat_call("t", "q", "a")
    shadow = chat_call("t", "q", "b")
    shadow.update(served_by="adapter:ad1", route_stage="shadow", shadow_of=plain["id"], fallback_reason="x")
    store.insert_calls([plain, shadow])  # one multi-row insert, as the recorder's group commit does
    got = store.get_call(shadow["id"])
    assert (got.served_by, got.route_stage, got.shadow_of, got.fallback_reason) == (
        "adapter:ad1",
        "shadow",
        plain["id"],
        "x",
    )


def test_fewshot_routes_keep_model_k_and_min_score_and_other_stages_reject_them(store):
    set_route(store, "t", "fewshot", model="base", k=3, min_score=0.5, reason="12 corrections")
    route = current_routes(store)["t"]
    assert (route.stage, route.adapter, route.percent) == ("fewshot", "", 100.0)
    assert (route.model, route.k, route.min_score) == ("base", 3, 0.5)
    set_route(store, "t", "fewshot")
    assert current_routes(store)["t"].options() == {"model": "general", "k": 8, "min_score": None}
    set_route(store, "t", "full", "ad1")
    assert current_routes(store)["t"].options() == {"model": "general", "k": 8, "min_score": None}
    rollback_route(store, "t")
    assert current_routes(store)["t"].stage == "fewshot"
    with pytest.raises(LoraforgeError, match="--k applies to stage fewshot only"):
        set_route(store, "t", "full", "ad1", k=4)
    with pytest.raises(LoraforgeError, match="--adapter does not apply to stage fewshot"):
        set_route(store, "t", "fewshot", "ad1")


def test_migration_0003_adds_route_options_and_keeps_older_routes_readable(store):
    from alembic import command
    from sqlalchemy import MetaData, Table, inspect

    from loraforge.store.migrate import alembic_config
    from loraforge.store.tables import utcnow

    def migrate(step, revision):
        with store.db.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            step(cfg, revision)

    migrate(command.downgrade, "0002")
    try:
        assert "options" not in {c["name"] for c in inspect(store.db).get_columns("route_changes")}
        with store.db.begin() as conn:  # a route written before 0003
            table = Table("route_changes", MetaData(), autoload_with=conn)
            conn.execute(
                table.insert().values(
                    task="old", seq=1, time=utcnow(), action="set", actor="ana", stage="full",
                    adapter="ad1", percent=100.0, fallback=["on-error"], timeout_ms=500, output={},
                )
            )  # fmt: skip
    finally:
        migrate(command.upgrade, "head")
    old = current_routes(store)["old"]
    assert (old.adapter, old.timeout_ms, old.model, old.k, old.min_score) == ("ad1", 500, "general", 8, None)
    set_route(store, "old", "fewshot", model="base")
    assert current_routes(store)["old"].model == "base"
