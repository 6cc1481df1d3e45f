"""The teacher client over real HTTP: retries on 429/5xx/timeouts with exact backoff delays, fatal errors."""

import asyncio
import time

import pytest

from loraforge.synth.teacher import (
    TeacherClient,
    TeacherError,
    TeacherSettings,
    chat_completions_url,
    parse_retry_after,
)
from tests.synth.scripted import MODEL, Answer, Fail, Sleeps, free_port, make_client

MESSAGES = [{"role": "user", "content": "hi"}]


def ask(client: TeacherClient, request_id: str | None = None):
    async def go():
        async with client:
            return await client.chat(MESSAGES, request_id=request_id)

    return asyncio.run(go())


def test_chat_completions_url_accepts_base_v1_and_full_forms():
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"
    with pytest.raises(TeacherError, match="must start with http"):
        chat_completions_url("h:1/v1")


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_success_sends_model_settings_and_request_id(teacher_server):
    teacher_server.push(Answer("hello", finish_reason="length"))
    reply = ask(make_client(teacher_server, temperature=0.3, max_tokens=77), request_id="r-1")
    assert (reply.content, reply.finish_reason) == ("hello", "length")
    (logged,) = teacher_server.log
    assert logged.body["model"] == MODEL
    assert logged.body["messages"] == MESSAGES
    assert (logged.body["temperature"], logged.body["max_tokens"]) == (0.3, 77)
    assert logged.request_id == "r-1"
    assert "authorization" not in logged.headers


def test_api_key_is_sent_as_bearer(teacher_server):
    teacher_server.push(Answer("ok"))
    ask(make_client(teacher_server, api_key="sk-test"))
    assert teacher_server.log[0].headers["authorization"] == "Bearer sk-test"


def test_429_with_retry_after_then_5xx_use_server_delay_then_exponential_backoff(teacher_server):
    teacher_server.push(Fail(429, {"Retry-After": "7"}), Fail(500), Fail(503), Answer("done"))
    sleeps = Sleeps()
    client = make_client(teacher_server, sleeps, backoff_base_s=0.5)
    assert ask(client).content == "done"
    # Retry-After wins for the 429; the 5xx retries back off 0.5 * 2**attempt (attempts 1 and 2).
    assert sleeps.delays == [7.0, 1.0, 2.0]
    assert client.stats.retries == {"429": 1, "500": 1, "503": 1}
    assert len(teacher_server.log) == 4


def test_retry_after_is_capped(teacher_server):
    teacher_server.push(Fail(429, {"Retry-After": "9999"}), Answer("ok"))
    sleeps = Sleeps()
    ask(make_client(teacher_server, sleeps, retry_after_max_s=30.0))
    assert sleeps.delays == [30.0]


def test_retry_after_is_really_waited_for(teacher_server):
    teacher_server.push(Fail(429, {"Retry-After": "1"}), Answer("ok"))
    start = time.monotonic()
    assert ask(make_client(teacher_server)).content == "ok"
    assert time.monotonic() - start >= 1.0


def test_timeout_is_retried(teacher_server):
    teacher_server.push(Answer("too late", delay=1.0), Answer("in time"))
    sleeps = Sleeps()
    client = make_client(teacher_server, sleeps, timeout_s=0.3)
    assert ask(client).content == "in time"
    assert client.stats.retries == {"timeout": 1}
    assert sleeps.delays == [0.01]


def test_retries_run_out(teacher_server):
    teacher_server.push(*[Fail(502)] * 3)
    sleeps = Sleeps()
    with pytest.raises(TeacherError, match=r"failed after 3 attempts \(last: HTTP 502"):
        ask(make_client(teacher_server, sleeps, max_retries=2))
    assert len(teacher_server.log) == 3
    assert sleeps.delays == [0.01, 0.02]


def test_client_errors_are_not_retried(teacher_server):
    teacher_server.push(Fail(400), Answer("never asked"))
    with pytest.raises(TeacherError, match="rejected the request .HTTP 400"):
        ask(make_client(teacher_server))
    assert len(teacher_server.log) == 1


def test_jitter_only_lengthens_the_delay():
    client = TeacherClient(
        TeacherSettings(url="http://127.0.0.1:9", model="m", backoff_base_s=1.0, jitter=0.5)
    )
    delays = [client.backoff_delay(2, None) for _ in range(50)]
    assert all(4.0 <= d <= 6.0 for d in delays) and len(set(delays)) > 1
    assert client.backoff_delay(20, None) <= 60.0 * 1.5


def test_unreachable_teacher_is_reported_at_start():
    client = TeacherClient(TeacherSettings(url=f"http://127.0.0.1:{free_port()}", model="m"))

    async def go():
        async with client:
            await client.check_reachable()

    with pytest.raises(TeacherError, match="cannot reach the teacher at http://127.0.0.1"):
        asyncio.run(go())


def test_reachable_teacher_passes_the_start_check(teacher_server):
    async def go():
        async with make_client(teacher_server) as client:
            await client.check_reachable()

    asyncio.run(go())
