"""Hostile OpenAI requests (hypothesis strategies) and the oracle every answer must pass.

The oracle is the project's rule for bad input: never a 5xx; every 4xx carries an OpenAI-shaped body
`{"error": {"message", "type", ...}}`; a 200 is a well-formed completion (a stream ends with `[DONE]` and
only OpenAI finish reasons). `sweep` runs a strategy for a bounded, derandomized number of examples and
collects every violation instead of stopping at the first, so one run lists all of them; the tests assert
the list is empty and benchmarks/reliability_report.py counts them.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

FINISH_REASONS = {"stop", "length"}  # what OpenAI sends for a completion that ended normally
REQUEST_TIMEOUT_S = 60.0  # a server that does not answer within this has hung on the input
NESTING_DEPTH = 100_000  # "[[[[...]]]]": deeper than any JSON parser's recursion limit

# Values that break naive code: 64-bit and beyond, negative, huge floats, NUL and non-ASCII text.
HUGE_INTS = st.sampled_from([2**31, 2**32 + 1, 2**63, 2**64, 2**70, 10**40, -1, -5, -(2**63), -(2**70)])
ODD_TEXT = st.sampled_from(["", "\x00", "é" * 50, "\U0001f600" * 20, "\ud800", "<|im_end|>", " " * 1000])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324]),
    st.text(max_size=40),
    ODD_TEXT,
)
NESTED = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
TOKEN_IDS = st.lists(
    st.one_of(st.integers(0, 300), st.integers(-(10**4), 10**4), HUGE_INTS), min_size=1, max_size=8
)
EDGE_FLOATS = st.sampled_from([0.0, -0.0, 1e-300, 0.5, 1.0, 2.0, 2.0000001, -1.0, 1e308])

COMMON_FIELDS = [
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "logit_bias",
    "merge",
    "user",
    "response_format",
    "guided_choice",
    "guided_json",
    "guided_regex",
    "guided_choice_fallback",
    "guided_choice_classifier",
]
# OpenAI fields the servers do not implement (a 400 naming them is right; silently ignoring them is not).
UNIMPLEMENTED = ["tools", "tool_choice", "functions"]
FIELDS = {
    "completions": [*COMMON_FIELDS, "prompt", "echo", "suffix", "best_of", *UNIMPLEMENTED],
    "chat": [*COMMON_FIELDS, "messages", "max_completion_tokens", "top_logprobs", *UNIMPLEMENTED],
}
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


# Tried first for their field, on every run: what issue 11 found reaching the engine or the parser.
KNOWN_BAD = {
    "prompt": [[999_999_999], [-5], [2**70], [0, 383, 384]],
    "seed": [2**70, -1],
    "max_tokens": [2**70, 0, -1],
    "max_completion_tokens": [2**70, 0],
    "top_k": [2**63, -1],
    "n": [2**70, 0, 2],
    "temperature": [-0.0, 1e-300, 2.0000001],
    "top_p": [0.0, 1e-300, 1.0000001],
    "stop": [["x" * 1000] * 1000, ["\ud800"], [""]],
    "messages": [
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
        [{"role": "tool", "content": None}],
        [{"role": "user", "content": "\ud800"}],
    ],
    "stream_options": [{"include_usage": "yes"}, []],
    "logprobs": [True, 5],
    "tools": [[{"type": "function", "function": {"name": "f"}}]],
    "logit_bias": [{"5": 100}, {"999999999": -100}, {"-1": 1}, {"5": 1e308}],
    "top_logprobs": [2**70, -1, 21],
    "merge": [{"adapters": {"ad00": 1e308, "ad07": -1e308}}, {"adapters": {"../ad00": 1}}, {"adapters": {}}],
}


def field_value(name: str) -> st.SearchStrategy:
    """A hostile value for `name`: first values of the right type that are out of range or odd (what slips
    past type checks into the engine), then wrong types and deeply odd structures."""
    typed = {
        "prompt": st.one_of(TOKEN_IDS, ODD_TEXT, st.lists(ODD_TEXT, max_size=3)),
        "messages": st.lists(message(), max_size=3),
        "stop": st.one_of(ODD_TEXT, st.lists(ODD_TEXT, max_size=5), st.just(["ab"] * 300)),
        "seed": HUGE_INTS,
        "max_tokens": HUGE_INTS,
        "max_completion_tokens": HUGE_INTS,
        "top_k": HUGE_INTS,
        "n": HUGE_INTS,
        "temperature": EDGE_FLOATS,
        "top_p": EDGE_FLOATS,
        "stream": st.just(True),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "logprobs": st.one_of(st.booleans(), HUGE_INTS),
    }
    if name in typed:  # twice as likely as the rest: these are the values that reach the engine
        return st.one_of(typed[name], typed[name], SCALARS, NESTED)
    return st.one_of(SCALARS, NESTED)


def message() -> st.SearchStrategy:
    content = st.one_of(
        st.text(max_size=40),
        ODD_TEXT,
        st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "image_url", "input_audio", "x"])},
                optional={"text": SCALARS, "image_url": NESTED},
            ),
            max_size=3,
        ),
        NESTED,
    )
    role = st.sampled_from(["user", "system", "assistant", "developer", "tool", "wizard", ""])
    return st.one_of(st.fixed_dictionaries({"role": role, "content": content}), NESTED)


@st.composite
def hostile_body(draw, endpoint: str, models: list[str], focus: str) -> dict[str, Any]:
    """A valid small request whose field `focus` is replaced by a hostile value (or added, if unknown)."""
    body = valid_body(endpoint, draw(st.sampled_from(models)))
    body[focus] = draw(field_value(focus))
    return body


def valid_body(endpoint: str, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 4}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": "hello"}]
    else:
        body["prompt"] = "hello"
    return body


# Bodies that are not a JSON object at all, or JSON no parser should be made to recurse through; every sweep
# sends each of them to each endpoint.
RAW_BODIES = [
    b"",
    b"null",
    b"[]",
    b"42",
    b'"text"',
    b"{",
    b"NaN",
    b'{"model": 1e400}',
    b'{"model": "x", "max_tokens": NaN}',
    b"\xff\xfe\x00{",
    b"[" * NESTING_DEPTH + b"]" * NESTING_DEPTH,
    b'{"model": "m", "x": ' + b"[" * NESTING_DEPTH + b"]" * NESTING_DEPTH + b"}",
    b'{"a": ' * 5000 + b"1" + b"}" * 5000,
]


def error_shape_problem(response: httpx.Response) -> str | None:
    """Why a 4xx body is not OpenAI-shaped, or None when it is."""
    try:
        err = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"4xx without an OpenAI error body: {response.text[:200]!r}"
    if not isinstance(err, dict) or not isinstance(err.get("message"), str) or not err["message"]:
        return f"error body lacks a message: {response.text[:200]!r}"
    if not isinstance(err.get("type"), str) or not err["type"]:
        return f"error body lacks a type: {response.text[:200]!r}"
    return None


def success_problem(response: httpx.Response, stream: bool) -> str | None:
    """Why a 200 is not a well-formed completion (stream or not), or None."""
    if not stream:
        try:
            choices = response.json()["choices"]
        except (ValueError, KeyError, TypeError):
            return f"200 without choices: {response.text[:200]!r}"
        reasons = {c.get("finish_reason") for c in choices}
    else:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return f"stream did not end with [DONE]: {response.text[-200:]!r}"
        chunks = [json.loads(e) for e in events[:-1]]
        if any("error" in c for c in chunks):
            return f"stream carried an error event after a 200: {events[:-1][-1][:200]!r}"
        reasons = {c.get("finish_reason") for chunk in chunks for c in chunk.get("choices", [])} - {None}
    if not reasons or not reasons <= FINISH_REASONS:
        return f"finish_reason {sorted(map(str, reasons))} is not one of {sorted(FINISH_REASONS)}"
    return None


def judge(response: httpx.Response, stream: bool, completion: bool = True) -> str | None:
    """The oracle: None when the answer is acceptable for any input, else what is wrong with it.
    `completion`: the answer of a completion endpoint, whose 200 must be a well-formed completion."""
    if response.status_code >= 500:
        return f"HTTP {response.status_code}: {response.text[:200]!r}"
    if response.status_code >= 400:
        return error_shape_problem(response)
    if response.status_code == 200:
        return success_problem(response, stream) if completion else None
    return f"unexpected HTTP {response.status_code}"


@dataclass
class Sweep:
    """What a sweep sent and what came back."""

    tried: int = 0
    statuses: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if isinstance(status, int) and status >= 500)

    def record(
        self,
        label: str,
        what: str,
        response: httpx.Response,
        stream: bool,
        shown: str,
        completion: bool = True,
    ) -> None:
        """Count an answer and judge it."""
        self.statuses[response.status_code] += 1
        problem = judge(response, stream, completion)
        if problem:
            self.violations.append(f"{label} {what}: {problem} for {shown}")

    def report(self) -> str:
        return f"{len(self.violations)} of {self.tried} requests violated the oracle:\n" + "\n".join(
            self.violations[:40]
        )


def sweep_settings(max_examples: int):
    """Bounded and reproducible: the same examples on every run, no example database, no shrinking
    (nothing fails inside the sweep, violations are collected)."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def send(
    client: httpx.Client,
    result: Sweep,
    label: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict | None = None,
) -> None:
    """POST one request; its status counted and its answer judged (a timeout or a dropped connection counts
    as a violation: the server hung on, or died of, the input). `body` is serialized here, escaping
    non-ASCII (httpx would refuse a lone surrogate)."""
    result.tried += 1
    content = raw if raw is not None else json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}
    stream = isinstance(body, dict) and body.get("stream") is True
    shown = repr(body if raw is None else raw)
    shown = shown if len(shown) <= 240 else shown[:240] + f"... ({len(shown)} chars)"
    try:
        response = client.post(path, content=content, headers=headers, timeout=REQUEST_TIMEOUT_S)
    except httpx.HTTPError as exc:
        result.statuses[type(exc).__name__] += 1
        result.violations.append(f"{label} POST {path}: {type(exc).__name__} {exc} for {shown}")
        return
    result.record(label, f"POST {path}", response, stream, shown)


def sweep_bodies(client: httpx.Client, models: list[str], per_field: int, label: str) -> Sweep:
    """Every raw body on both completion endpoints, then `per_field` hostile values of each field of each
    endpoint (one field at a time: a second bad field would be rejected first and hide the first)."""
    result = Sweep()
    for path in PATHS.values():
        for raw in RAW_BODIES:
            send(client, result, label, path, raw=raw)
    for endpoint, fields in FIELDS.items():
        for name in fields:
            _sweep_field(client, result, label, endpoint, models, name, per_field)
    return result


def _sweep_field(client, result: Sweep, label: str, endpoint: str, models, name: str, examples: int) -> None:
    def probe(body) -> None:
        send(client, result, label, PATHS[endpoint], body)

    test = given(body=hostile_body(endpoint, models, name))(probe)
    for value in KNOWN_BAD.get(name, []):
        test = example(body=valid_body(endpoint, models[0]) | {name: value})(test)
    sweep_settings(examples)(test)()


def sweep_size(per_field: int) -> int:
    """How many requests `sweep_bodies` sends."""
    fields = [name for names in FIELDS.values() for name in names]
    return len(PATHS) * len(RAW_BODIES) + sum(per_field + len(KNOWN_BAD.get(name, [])) for name in fields)
