"""The pairwise judge against a scripted judge server: order swap, refusals and malformed verdicts."""

import asyncio

import pytest

from loraforge.compare.judge import JudgeSettings, judge_all, parse_verdict
from tests.compare.judge_server import create_judge
from tests.gateway.servers import ThreadServer


@pytest.fixture
def judge():
    calls: list[dict] = []
    with ThreadServer(create_judge(calls)) as server:
        yield JudgeSettings(f"{server.url}/v1", "judge-1"), calls


def convo(text):
    return [{"role": "user", "content": text}]


def test_wins_need_both_orders_and_bad_verdicts_are_counted_as_ties(judge):
    settings, calls = judge
    items = [
        (convo("q1"), "GOOD answer", "meh"),  # candidate wins in both orders
        (convo("q2"), "meh", "GOOD answer"),  # baseline wins in both orders
        (convo("q3"), "same", "same"),  # tie
        (convo("biased q4"), "x", "y"),  # says A both times: the orders disagree -> tie
        (convo("please refuse"), "GOOD", "meh"),  # refused twice -> tie, counted
        (convo("garble this"), "GOOD", "meh"),  # malformed twice -> tie, counted
        (convo("q7"), None, "answer"),  # the candidate failed: it loses without asking the judge
    ]
    tally = asyncio.run(judge_all(settings, items))
    assert tally.outcomes == [1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0]
    summary = tally.summary()
    assert (summary["wins"], summary["losses"], summary["ties"]) == (1, 2, 4)
    assert (summary["refused_verdicts"], summary["malformed_verdicts"]) == (2, 2)
    assert len(calls) == 12  # two passes for each of the six items both sides answered
    firsts = [c["messages"][-1]["content"] for c in calls if "q1" in c["messages"][-1]["content"]]
    assert {f.index("GOOD answer") < f.index("meh") for f in firsts} == {True, False}  # both orders shown


def test_an_unreachable_judge_is_counted_not_crashed_on():
    from tests.gateway.servers import free_port

    settings = JudgeSettings(f"http://127.0.0.1:{free_port()}/v1", "judge-1", timeout_s=2)
    tally = asyncio.run(judge_all(settings, [(convo("q"), "a", "b")]))
    assert tally.outcomes == [0.5] and tally.summary()["judge_errors"] == 2


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("A", "A"),
        (" b.", "B"),
        ("Tie", "TIE"),
        ("Verdict: A", "A"),
        ("I cannot decide", "refused"),
        ("AB", "malformed"),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict
