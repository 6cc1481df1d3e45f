"""Reading JSON out of model answers: fences, prose, one object or a list, cut-off and malformed tails."""

import pytest

from loraforge.synth.parsing import parse_batch, parse_value

A = {"input": "a", "output": "b"}
C = {"input": "c", "output": "d"}


@pytest.mark.parametrize(
    ("text", "items", "problem", "broken"),
    [
        ('[{"input":"a","output":"b"},{"input":"c","output":"d"}]', [A, C], None, 0),
        ('Sure!\n```json\n[{"input":"a","output":"b"}]\n```\nHope this helps.', [A], None, 0),
        ('Here it is: {"input":"a","output":"b"} -- enjoy', [A], None, 0),
        ('{"examples": [{"input":"a","output":"b"}]}', [A], None, 0),
        ('note {this} first: [{"input":"a","output":"b"}]', [A], None, 0),
        ('{"input":"a","output":"b"}\n{"input":"c","output":"d"}\n', [A, C], None, 0),  # one object per line
        (
            '```\n[{"input":"a","output":"b"}]\n```\nand\n```\n[{"input":"c","output":"d"}]\n```',
            [A, C],
            None,
            0,
        ),
        (
            '{"input":"a","output":"b"}\n{"input": "x", "output": }\n{"input":"c","output":"d"}',
            [A, C],
            None,
            1,
        ),
        ('[{"input":"a","output":"b"},{"input":"c","outp', [A], "truncated", 0),
        ('```json\n[{"input":"a","output":"b"},\n{"input":"c"', [A], "truncated", 0),
        ('[{"input":"a","output":"b"} {"input": oops}]', [A], "malformed_json", 0),
        ('{"input": "a", "output": }', [], None, 1),
        ("no json here", [], "malformed_json", 0),
        ("see {this} and {that}", [], "malformed_json", 0),
        ('[{"input": "a", "output": "b \\" ] }', [], "truncated", 0),
        ("[]", [], None, 0),
    ],
)
def test_parse_batch(text, items, problem, broken):
    batch = parse_batch(text)
    assert batch.items == items
    assert batch.tail_problem == problem
    assert batch.broken == broken


def test_token_limit_without_any_item_is_truncated():
    assert parse_batch("[", "length").tail_problem == "truncated"
    assert parse_batch('[{"input":"a","output":"b"}]', "length").tail_problem is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("card_arrival", "card_arrival"),
        ('"card_arrival"', "card_arrival"),
        ('```json\n{"label": "x"}\n```', {"label": "x"}),
        ('The answer: {"a": 1} ok', {"a": 1}),
        ("  plain words  ", "plain words"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value
