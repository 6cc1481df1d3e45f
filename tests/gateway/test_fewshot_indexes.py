"""The gateway's few-shot indexes: built in the background (a request never waits for one), kept when the
store fails, dropped when the route moves on."""

import asyncio
import logging
from types import SimpleNamespace

from loraforge.fewshot import ExampleIndex, FewShotExample
from loraforge.gateway.fewshot import FewShotIndexes
from loraforge.store.routes import Route

EXAMPLE = FewShotExample.of([{"role": "user", "content": "lost my card"}], "lost_card")


def test_builds_in_the_background_keeps_the_last_index_when_the_store_fails(monkeypatch, caplog):
    route = Route("t", "fewshot", "", k=2)
    table = SimpleNamespace(routes={"t": route})
    first = ExampleIndex.from_rows([EXAMPLE])
    calls = []

    def from_store(store, task, *, min_score):
        calls.append((task, min_score))
        if len(calls) > 1:
            raise RuntimeError("the store is down")
        return first

    monkeypatch.setattr(ExampleIndex, "from_store", staticmethod(from_store))

    async def scenario():
        indexes = FewShotIndexes(None, table, refresh_s=0.01)
        assert indexes.index_for(route) is None  # the first build starts; the caller does not wait for it
        await asyncio.sleep(0.2)
        assert indexes.index_for(route) is first
        indexes.start()
        await asyncio.sleep(0.2)  # rebuilds fail: the examples read last stay
        assert indexes.index_for(route) is first and len(calls) > 2
        table.routes = {"t": Route("t", "full", "ad1")}
        await asyncio.sleep(0.1)
        assert indexes.indexes == {}  # no longer a few-shot task: its examples are freed
        await indexes.stop()

    with caplog.at_level(logging.WARNING, logger="loraforge.gateway"):
        asyncio.run(scenario())
    assert [r.message for r in caplog.records].count(
        "few-shot examples of t not refreshed (keeping the last ones read): the store is down"
    ) == 1  # once per outage, not at every refresh
