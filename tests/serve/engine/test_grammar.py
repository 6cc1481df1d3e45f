"""Grammar-constrained decoding in the engine: JSON schemas, JSON objects and regexes (xgrammar), mixed in one
batch with free rows; schemas that cannot be enforced are refused."""

import json
import re

import jsonschema
import pytest

from loraforge.serve.engine import Engine, EngineConfig, FinishReason, SamplingParams
from loraforge.serve.engine.constraints import ChoiceConstraint
from loraforge.serve.engine.grammar import GrammarError, Grammars, unsupported_keyword

# Bounded: even a random model must finish it within the token budget.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "active"],
    "additionalProperties": False,
}


def _nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(EngineConfig(model=str(tiny_model_dir), precision="fp32"))


@pytest.fixture(scope="module")
def grammars(engine):
    return Grammars(engine.tokenizer, engine.vocab_size, engine.eos_ids)


def _ids(engine, text="The quick brown fox"):
    return engine.tokenizer(text).input_ids


def test_json_schema_output_validates_greedy_and_sampled(engine, grammars):
    constraint = grammars.json_schema(PERSON)
    params = [
        SamplingParams(max_tokens=120, temperature=0, constraint=constraint),
        *(SamplingParams(max_tokens=120, temperature=1.0, seed=s, constraint=constraint) for s in range(4)),
    ]
    seqs = engine.generate([_ids(engine)] * len(params), params)
    for seq in seqs:
        assert seq.finish_reason == FinishReason.STOP, seq.output_text
        jsonschema.validate(json.loads(seq.output_text), PERSON)
    assert len({s.output_text for s in seqs}) > 1  # the sampled rows really sample


def test_free_rows_of_a_mixed_batch_equal_their_solo_output(engine, grammars, adapter_dir):
    for name in ("alpha", "beta"):
        engine.adapters.register(name, adapter_dir / name)
    free = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    alone = engine.generate([_ids(engine, "Once upon")], free, ["alpha"])[0].output_ids
    mixed = engine.generate(
        [_ids(engine), _ids(engine, "Once upon"), _ids(engine, "Hello")],
        [
            SamplingParams(max_tokens=120, temperature=0, constraint=grammars.json_schema(PERSON)),
            SamplingParams(max_tokens=16, temperature=0, ignore_eos=True),
            SamplingParams(max_tokens=40, temperature=0, constraint=grammars.regex(r"[a-z]{3,6}!")),
        ],
        ["beta", "alpha", None],
    )
    assert mixed[1].output_ids == alone
    jsonschema.validate(json.loads(mixed[0].output_text), PERSON)
    assert re.fullmatch(r"[a-z]{3,6}!", mixed[2].output_text)


def test_json_object_and_max_tokens_mid_json(engine, grammars):
    whole, cut = engine.generate(
        [_ids(engine)] * 2,
        [
            SamplingParams(max_tokens=200, temperature=0, constraint=grammars.json_schema(PERSON)),
            SamplingParams(max_tokens=5, temperature=0, constraint=grammars.json_schema(PERSON)),
        ],
    )
    assert cut.finish_reason == FinishReason.LENGTH and len(cut.output_ids) == 5
    assert whole.output_text.startswith(cut.output_text) and cut.output_text.startswith('{"')
    obj = engine.generate(
        [_ids(engine)], SamplingParams(max_tokens=60, temperature=0, constraint=grammars.json_object())
    )[0]
    # A random model need not close the object in time, but what it wrote is the start of one.
    assert obj.output_text.startswith("{")
    if obj.finish_reason == FinishReason.STOP:
        assert isinstance(json.loads(obj.output_text), dict)


def test_one_constraint_serves_many_sequences_each_with_its_own_state(engine, grammars):
    constraint = grammars.regex(r"(yes|no)")
    seqs = engine.generate(
        [_ids(engine, t) for t in ("Is it?", "Really", "Maybe so")],
        SamplingParams(max_tokens=8, temperature=0, constraint=constraint),
    )
    assert all(s.output_text in ("yes", "no") and s.finish_reason == FinishReason.STOP for s in seqs)
    assert len({id(s.constraint_state) for s in seqs}) == 3


def test_choice_constraint_is_shared_stateless(engine):
    constraint = ChoiceConstraint.from_strings(["alpha", "beta gamma"], engine.tokenizer)
    seqs = engine.generate(
        [_ids(engine, t) for t in ("One", "Two")],
        SamplingParams(max_tokens=8, temperature=1.0, seed=3, constraint=constraint),
    )
    assert all(s.output_text in ("alpha", "beta gamma") for s in seqs)
    assert constraint.start() is constraint


def test_a_choice_is_complete_once_its_first_tokens_name_it(engine):
    """The rest of a choice is appended without a model step per token: each would be chosen with
    probability 1. Rows that want top logprobs still step token by token, to the same output."""
    choices = ["alpha beta gamma delta", "omega"]
    constraint = ChoiceConstraint.from_strings(choices, engine.tokenizer)
    eos = engine.tokenizer.eos_token_id
    long = engine.tokenizer(choices[0], add_special_tokens=False)["input_ids"]
    assert len(long) > 2 and constraint.decided([]) == []  # two choices left: nothing decided
    assert constraint.decided(long[:1]) == [*long[1:], eos]
    assert constraint.decided(long) == [eos] and constraint.decided([*long, eos]) == []

    steps, run = [], engine.runner.run
    engine.runner.run = lambda seqs, is_prefill: steps.append(len(seqs)) or run(seqs, is_prefill)
    try:
        outputs = {}
        for logprobs in (0, 2):
            steps.clear()
            params = SamplingParams(max_tokens=16, temperature=0, constraint=constraint, logprobs=logprobs)
            (seq,) = engine.generate([_ids(engine, "Pick one")], params)
            outputs[logprobs] = (seq.output_text, seq.output_ids, len(steps))
            assert seq.finish_reason == FinishReason.STOP and len(seq.logprobs) == len(seq.output_ids)
        text, ids, model_steps = outputs[0]
        assert text in choices and outputs[2][:2] == (text, ids)
        assert model_steps == 1 and outputs[2][2] == len(ids)  # one prefill, against one step a token
        steps.clear()
        params = SamplingParams(max_tokens=2, temperature=0, constraint=constraint)
        (cut,) = engine.generate([_ids(engine, "Pick one")], params)
        assert cut.output_ids == ids[:2] and cut.finish_reason == FinishReason.LENGTH and len(steps) == 1
        only = ChoiceConstraint.from_strings([choices[0]], engine.tokenizer)
        params = SamplingParams(max_tokens=16, temperature=0, constraint=only, stop=["gamma"])
        (stopped,) = engine.generate([_ids(engine, "Pick one")], params)
        assert stopped.output_text == "alpha beta " and stopped.finish_reason == FinishReason.STOP
    finally:
        engine.runner.run = run


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "foo"}, "invalid JSON schema at '/type'"),
        ({"type": "object", "properties": 5}, "invalid JSON schema at '/properties'"),
        ([1, 2], "must be an object"),
        ({"type": "integer", "minimum": 5, "maximum": 3}, "minimum greater than maximum"),
        ({"properties": {"a": {"not": {"type": "string"}}}}, "'/properties/a/not' is not supported"),
        ({"$ref": "#/$defs/missing"}, "unsupported JSON schema"),
        (_nested(100), "nests deeper than 48 levels"),
        ({"$ref": "http://example.com/s.json"}, "'/$ref' is not supported"),
        ({"$schema": 5, "type": "string"}, "invalid JSON schema at '/$schema'"),
    ],
)
def test_bad_schemas_are_refused_with_the_reason(grammars, schema, message):
    with pytest.raises(GrammarError, match=re.escape(message)):
        grammars.json_schema(schema)


def test_bad_regex_is_refused(grammars):
    with pytest.raises(GrammarError, match="invalid regular expression: .*parenthesis"):
        grammars.regex("(ab")


def test_unsupported_keyword_looks_into_subschemas_not_property_names():
    assert unsupported_keyword({"properties": {"not": {"type": "string"}}}) is None
    assert (
        unsupported_keyword({"anyOf": [{}, {"items": {"uniqueItems": True}}]}) == "/anyOf/1/items/uniqueItems"
    )
