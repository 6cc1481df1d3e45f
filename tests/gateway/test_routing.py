"""The routing decision and output validity as functions: canary split, stickiness, what counts as invalid."""

import pytest

from loraforge.gateway.routing import canary_bucket, goes_to_adapter, invalid_reason, stickiness_key
from loraforge.store.output_spec import OutputSpec
from loraforge.store.routes import Route


@pytest.mark.parametrize("percent", [5, 30, 50, 90])
def test_canary_splits_within_5_points_of_p_over_1000_users(percent):
    route = Route("intent", "canary", "ad1", percent=percent)
    bodies = [{"messages": [{"role": "user", "content": "hi"}], "user": f"user-{i}"} for i in range(1000)]
    share = sum(goes_to_adapter(route, body) for body in bodies) / 10
    assert abs(share - percent) <= 5


def test_canary_is_sticky_per_user_and_per_conversation():
    route = Route("intent", "canary", "ad1", percent=50)
    for i in range(50):
        decisions = {
            goes_to_adapter(route, {"messages": [{"role": "user", "content": f"q{j}"}], "user": f"u{i}"})
            for j in range(5)
        }
        assert len(decisions) == 1  # one user sees one model, whatever they ask
    convo = {"messages": [{"role": "user", "content": "where is my card?"}]}
    assert stickiness_key(convo) == stickiness_key(dict(convo))
    assert stickiness_key(convo).startswith("conversation:")
    # Tasks split independently: the same user is not always on the same side of every task's canary.
    sides = [
        (canary_bucket("a", f"user:{i}") < 50) == (canary_bucket("b", f"user:{i}") < 50) for i in range(400)
    ]
    assert 0.35 < sum(sides) / len(sides) < 0.65


def test_full_always_and_shadow_never_send_to_the_adapter():
    body = {"messages": [{"role": "user", "content": "x"}]}
    assert goes_to_adapter(Route("t", "full", "ad1"), body)
    assert not goes_to_adapter(Route("t", "shadow", "ad1"), body)


def _chat(text):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def test_invalid_reasons_by_task_kind():
    labels = OutputSpec("classification", ("card_arrival", "lost_card"))
    assert invalid_reason(labels, "chat.completions", _chat(" card_arrival\n")) is None
    assert "not in the task's label set" in invalid_reason(labels, "chat.completions", _chat("refund"))
    assert invalid_reason(labels, "chat.completions", {"choices": []}) == "the answer has no text"
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    spec = OutputSpec("json", schema=schema)
    assert invalid_reason(spec, "chat.completions", _chat('{"name": "x"}')) is None
    assert invalid_reason(spec, "chat.completions", _chat("{name")) == "the answer is not valid JSON"
    assert "violates the task's JSON schema" in invalid_reason(spec, "chat.completions", _chat('{"n": 1}'))
    text = {"choices": [{"index": 0, "text": "anything"}]}
    assert invalid_reason(OutputSpec(), "completions", text) is None
    assert invalid_reason(OutputSpec("json"), "completions", text) == "the answer is not valid JSON"
