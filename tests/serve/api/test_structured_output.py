"""Structured output through the official `openai` client: `response_format` (json_schema, json_object),
vLLM's `guided_choice` / `guided_regex` / `guided_json`, streaming, mixed batches, and 400s for what cannot
be enforced."""

import asyncio
import json
import math
import re

import jsonschema
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from tests.serve.api.conftest import API_KEY

MSG = [{"role": "user", "content": "Describe a user as JSON."}]
# Bounded, so that even the tiny random model finishes it well within the token budget.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}


def _schema_format(schema=PERSON, strict=True):
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": strict}}


def test_json_schema_output_validates(client):
    for model in ("ad01", "ad02"):
        r = client.chat.completions.create(
            model=model, messages=MSG, max_tokens=120, temperature=0, response_format=_schema_format()
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


class Ticket(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: int = Field(ge=1, le=5)
    urgent: bool
    team: str = Field(max_length=6)


def test_parse_with_a_pydantic_model(client):
    """The client's own structured-output helper: it sends a strict json_schema and parses the answer."""
    r = client.chat.completions.parse(
        model="ad03", messages=MSG, max_tokens=120, temperature=0.8, seed=5, response_format=Ticket
    )
    assert isinstance(r.choices[0].message.parsed, Ticket)


def test_json_object_output_is_an_object(client):
    r = client.chat.completions.create(
        model="ad04", messages=MSG, max_tokens=40, temperature=0, response_format={"type": "json_object"}
    )
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":  # a random model may not close it in time
        assert isinstance(json.loads(text), dict)


def test_max_tokens_mid_json_is_length(client):
    kw = {"model": "ad05", "messages": MSG, "temperature": 0, "response_format": _schema_format()}
    whole = client.chat.completions.create(max_tokens=120, **kw).choices[0].message.content
    cut = client.chat.completions.create(max_tokens=4, **kw)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 4
    assert whole.startswith(cut.choices[0].message.content)


def test_streaming_with_a_schema_equals_the_whole_answer(client):
    kw = {"model": "ad06", "messages": MSG, "max_tokens": 120, "temperature": 0}
    whole = client.chat.completions.create(response_format=_schema_format(), **kw)
    chunks = list(client.chat.completions.create(response_format=_schema_format(), stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_a_guided_choice_streams_whole_with_a_logprob_per_token(client):
    """A label named by its first tokens is finished without a model step per remaining token (engine.py:
    `_take_decided`): the stream, the whole answer, the logprobs and the usage still agree."""
    labels = ["card_arrival", "lost_or_stolen_card", "refund"]
    kw = {"model": "ad07", "messages": MSG, "max_tokens": 20, "temperature": 0, "logprobs": True}
    whole = client.chat.completions.create(extra_body={"guided_choice": labels}, **kw)
    text = whole.choices[0].message.content
    assert text in labels and whole.choices[0].finish_reason == "stop"
    entries = whole.choices[0].logprobs.content
    assert len(entries) == whole.usage.completion_tokens  # the label's tokens and the end of sequence
    assert "".join(e.token for e in entries).startswith(text)
    assert all(e.logprob <= 0 for e in entries)
    chunks = list(
        client.chat.completions.create(
            extra_body={"guided_choice": labels}, stream=True, stream_options={"include_usage": True}, **kw
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_guided_choice_regex_and_json_in_extra_body(client):
    labels = ["card_arrival", "lost_or_stolen_card", "refund"]
    for model in ("ad07", "ad08"):
        chat = client.chat.completions.create(
            model=model, messages=MSG, max_tokens=20, temperature=1.0, extra_body={"guided_choice": labels}
        )
        assert chat.choices[0].message.content in labels and chat.choices[0].finish_reason == "stop"
    done = client.completions.create(
        model="ad07", prompt="Label:", max_tokens=20, temperature=0, extra_body={"guided_choice": labels}
    )
    assert done.choices[0].text in labels
    regex = client.completions.create(
        model="ad09",
        prompt="Code:",
        max_tokens=20,
        temperature=0,
        extra_body={"guided_regex": r"[A-Z]{2}-\d{3}"},
    )
    assert re.fullmatch(r"[A-Z]{2}-\d{3}", regex.choices[0].text)
    for schema in (PERSON, json.dumps(PERSON)):
        r = client.chat.completions.create(
            model="ad10", messages=MSG, max_tokens=120, temperature=0, extra_body={"guided_json": schema}
        )
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_a_guided_choice_fallback_answers_its_label_below_the_threshold(client):
    """The fallback label replaces the model's label exactly when the label's probability (its tokens'
    logprobs, renormalized over the choices) is below the threshold; logprobs are listed only if asked."""
    labels = ["card_arrival", "lost_or_stolen_card", "refund", "oos"]
    kw = {"model": "ad00", "messages": MSG, "max_tokens": 20, "temperature": 0}
    plain = client.chat.completions.create(logprobs=True, extra_body={"guided_choice": labels}, **kw)
    chosen = plain.choices[0].message.content
    probability = math.exp(sum(e.logprob for e in plain.choices[0].logprobs.content))
    assert chosen in labels and 0 < probability < 1  # the tiny random model is unsure between 4 labels
    fallback = next(label for label in labels if label != chosen)

    def answer(threshold: float, **extra) -> str:
        body = {
            "guided_choice": labels,
            "guided_choice_fallback": {"label": fallback, "threshold": threshold},
        }
        r = client.chat.completions.create(extra_body=body, **kw, **extra)
        assert r.choices[0].finish_reason == "stop"
        assert (r.choices[0].logprobs is not None) == bool(extra.get("logprobs"))
        return r.choices[0].message.content

    assert answer(probability * 0.9) == chosen
    assert answer(probability + (1 - probability) * 0.1) == fallback
    assert answer(probability + (1 - probability) * 0.1, logprobs=True) == fallback
    # A client's stop string that cuts the label short leaves no label to judge: the text stays as cut.
    assert answer(0.999, stop=[chosen[1:3]]) == chosen[:1]
    done = client.completions.create(
        model="ad00",
        prompt="Label:",
        max_tokens=20,
        temperature=0,
        n=2,
        extra_body={
            "guided_choice": labels,
            "guided_choice_fallback": {"label": fallback, "threshold": 0.999},
        },
    )
    assert [c.text for c in done.choices] == [fallback, fallback]


def test_a_streamed_guided_choice_fallback_sends_the_settled_label(client):
    """Streamed, each choice is held back until its label is complete and sent whole: the fallback label
    when it applies, never a prefix of the label it replaced."""
    labels = ["card_arrival", "lost_or_stolen_card", "refund", "oos"]
    kw = {"model": "ad00", "max_tokens": 20, "temperature": 0, "stream": True}
    plain = client.chat.completions.create(
        logprobs=True, extra_body={"guided_choice": labels}, messages=MSG, **{**kw, "stream": False}
    ).choices[0]
    chosen, tokens = plain.message.content, [e.token for e in plain.logprobs.content]
    fallback = next(label for label in labels if label != chosen)
    for threshold, expected in ((1e-9, chosen), (0.999, fallback)):
        extra = {
            "guided_choice": labels,
            "guided_choice_fallback": {"label": fallback, "threshold": threshold},
        }
        chunks = list(client.chat.completions.create(messages=MSG, logprobs=True, extra_body=extra, **kw))
        deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert deltas == [expected]
        assert chunks[-1].choices[0].finish_reason == "stop"
        streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
        assert [e.token for entries in streamed for e in entries.content] == tokens  # the model's own
        texts: dict[int, str] = {}
        for c in client.completions.create(prompt="Label:", n=2, extra_body=extra, **kw):
            for choice in c.choices:
                texts[choice.index] = texts.get(choice.index, "") + choice.text
        assert set(texts.values()) <= set(labels) and len(texts) == 2


@pytest.mark.parametrize(
    ("kw", "param", "words"),
    [
        (
            {"temperature": 0, "extra_body": {"guided_choice_fallback": {"label": "a"}}},
            "guided_choice_fallback",
            "needs guided_choice",
        ),
        (
            {
                "temperature": 0,
                "extra_body": {"guided_choice": ["a"], "guided_choice_fallback": {"label": "b"}},
            },
            "guided_choice_fallback",
            "not one of guided_choice",
        ),
        (
            {"extra_body": {"guided_choice": ["a"], "guided_choice_fallback": {"label": "a"}}},
            "guided_choice_fallback",
            "needs temperature 0",
        ),
        (
            {
                "extra_body": {
                    "guided_choice": ["a"],
                    "guided_choice_fallback": {"label": "a", "threshold": 1.5},
                }
            },
            "guided_choice_fallback.threshold",
            "less than 1",
        ),
        ({"response_format": _schema_format({"type": "foo"})}, "response_format", "invalid JSON schema"),
        (
            {"response_format": _schema_format({"type": "integer", "minimum": 3, "maximum": 1})},
            "response_format",
            "minimum",
        ),
        (
            {"response_format": _schema_format({"not": {"type": "null"}})},
            "response_format",
            "'/not' is not supported",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": PERSON}}},
            "response_format.json_schema.name",
            "required",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type", "json_schema"),
        ({"extra_body": {"guided_choice": []}}, "guided_choice", "at least one"),
        ({"extra_body": {"guided_regex": "(ab"}}, "guided_regex", "parenthesis"),
        ({"extra_body": {"guided_json": "{not json"}}, "guided_json", "not valid JSON"),
        ({"extra_body": {"guided_grammar": "root ::= 'a'"}}, "guided_grammar", "unknown"),
        (
            {"response_format": {"type": "json_object"}, "extra_body": {"guided_choice": ["a"]}},
            "guided_choice",
            "cannot be combined with response_format",
        ),
        (
            {"response_format": {"type": "json_object"}, "extra_body": {"ignore_eos": True}},
            "ignore_eos",
            "cannot",
        ),
    ],
)
def test_what_cannot_be_enforced_is_a_400_naming_it(client, kw, param, words):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="ad11", messages=MSG, max_tokens=8, **kw)
    body = err.value.body
    assert err.value.status_code == 400 and body["param"] == param, body
    assert words in body["message"], body


def test_a_mixed_batch_leaves_free_rows_as_they_are_alone(live):
    """Constrained and free requests on different adapters at once, plus a bad schema: the free ones
    equal their solo outputs, the constrained ones validate, the bad one is a 400."""
    client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0)
    free = {"messages": MSG, "max_tokens": 24, "temperature": 0, "extra_body": {"ignore_eos": True}}

    async def scenario():
        solo = [
            (await client.chat.completions.create(model=m, **free)).choices[0].message.content
            for m in ("ad12", "ad13")
        ]
        steps = live.engine.steps
        calls = [
            client.chat.completions.create(model="ad12", **free),
            client.chat.completions.create(
                model="ad14", messages=MSG, max_tokens=120, temperature=0, response_format=_schema_format()
            ),
            client.chat.completions.create(model="ad13", **free),
            client.chat.completions.create(
                model="ad15",
                messages=MSG,
                max_tokens=20,
                temperature=0,
                extra_body={"guided_choice": ["yes", "no"]},
            ),
            client.chat.completions.create(
                model="ad12", messages=MSG, response_format=_schema_format({"type": 1})
            ),
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return solo, results, live.engine.steps - steps

    solo, (a, person, b, choice, bad), steps = asyncio.run(scenario())
    assert [a.choices[0].message.content, b.choices[0].message.content] == solo
    jsonschema.validate(json.loads(person.choices[0].message.content), PERSON)
    assert choice.choices[0].message.content in ("yes", "no")
    assert isinstance(bad, openai.BadRequestError)
    # Fewer steps than the requests' tokens run one after another: they shared batches.
    assert steps < a.usage.completion_tokens + b.usage.completion_tokens + person.usage.completion_tokens
