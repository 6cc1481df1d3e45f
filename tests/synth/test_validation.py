"""Label and schema files, output checks per task kind, and the per-example drop reasons."""

import json

import pytest

from loraforge.errors import DataError, LoraforgeError
from loraforge.synth.validation import OutputSpec, check_example, is_echo, load_labels, load_schema

LABELS = ["card_arrival", "card_linking", "exchange_rate"]
SCHEMA = {
    "type": "object",
    "properties": {"intent": {"type": "string"}, "urgent": {"type": "boolean"}},
    "required": ["intent", "urgent"],
    "additionalProperties": False,
}
DESCRIPTION = "Classify a bank customer's message into the intent it expresses."


def test_labels_from_json_list_or_lines(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(LABELS))
    (tmp_path / "b.txt").write_text("card_arrival\n\n card_linking \nexchange_rate\n")
    assert load_labels(tmp_path / "a.json") == LABELS
    assert load_labels(tmp_path / "b.txt") == LABELS


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('["a", ', "not valid JSON"),
        ('["a", 3]', "JSON list of strings"),
        ("[]", "holds no labels"),
        ("\n\n", "holds no labels"),
        ('["a", "A"]', "lists 'A' twice"),
        ('["a", " "]', "empty label"),
    ],
)
def test_bad_label_files(tmp_path, content, message):
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_labels(path)


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_labels(tmp_path / "nope.json")
    with pytest.raises(DataError, match="does not exist"):
        load_schema(tmp_path / "nope.json")


def test_bad_schemas(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"type": "nonsense"}')
    with pytest.raises(DataError, match="not a valid JSON Schema"):
        load_schema(path)
    path.write_text("[1]")
    with pytest.raises(DataError, match="must be a JSON object"):
        load_schema(path)
    path.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_schema(path)


def test_labels_and_schema_are_exclusive():
    with pytest.raises(LoraforgeError, match="not both"):
        OutputSpec(labels=LABELS, schema=SCHEMA)


def test_classification_outputs():
    spec = OutputSpec(labels=LABELS)
    assert spec.kind == "classification"
    assert spec.check_output("card_arrival") == ("card_arrival", None)
    assert spec.check_output(' "Card_Arrival" ') == ("card_arrival", None)
    assert spec.check_output({"label": "exchange_rate"}) == ("exchange_rate", None)
    assert spec.check_output("refund") == (None, "not_in_labels")
    assert spec.check_output(3) == (None, "not_in_labels")
    assert spec.check_output("  ") == (None, "empty")


def test_schema_outputs():
    spec = OutputSpec(schema=SCHEMA)
    assert spec.kind == "json"
    assert spec.check_output({"intent": "x", "urgent": True}) == ('{"intent": "x", "urgent": true}', None)
    assert spec.check_output('{"intent": "x", "urgent": false}') == ('{"intent": "x", "urgent": false}', None)
    assert spec.check_output({"intent": "x"}) == (None, "schema_violation")
    assert spec.check_output("not json") == (None, "schema_violation")
    assert spec.check_output("") == (None, "empty")


def test_text_outputs():
    spec = OutputSpec()
    assert spec.kind == "text"
    assert spec.check_output(" an answer ") == ("an answer", None)
    assert spec.check_output({"a": 1}) == ('{"a": 1}', None)
    assert spec.check_output(None) == (None, "empty")


def test_echo_detection():
    prompts = [DESCRIPTION, "Return a JSON list of 1 objects and nothing else."]
    assert is_echo(DESCRIPTION, prompts)
    assert is_echo("classify a bank customer's message", prompts)  # a fragment of the prompt
    assert is_echo("Classify a bank customer's message into the intent it expresses!!", prompts)
    assert not is_echo("My card has not arrived yet, what should I do?", prompts)
    assert not is_echo("message", prompts)  # too short to call it an echo


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("just a string", "missing_fields"),
        ({"input": "hello there"}, "missing_fields"),
        ({"text": "hello there", "output": "card_arrival"}, "missing_fields"),
        ({"input": "   ", "output": "card_arrival"}, "empty"),
        ({"input": None, "output": "card_arrival"}, "empty"),
        ({"input": ["a"], "output": "card_arrival"}, "bad_type"),
        ({"input": DESCRIPTION, "output": "card_arrival"}, "echo"),
        ({"input": "Where is my card?", "output": "refund"}, "not_in_labels"),
        ({"input": "Where is my card?", "output": ""}, "empty"),
    ],
)
def test_check_example_drop_reasons(item, reason):
    assert check_example(item, OutputSpec(labels=LABELS), [DESCRIPTION]) == (None, reason)


def test_check_example_valid_and_text_echo():
    spec = OutputSpec(labels=LABELS)
    ok = {"input": "  Where is my card?  ", "output": "CARD_ARRIVAL"}
    assert check_example(ok, spec, [DESCRIPTION]) == (("Where is my card?", "card_arrival"), None)
    echoed = {"input": "Please summarise the meeting notes", "output": "Please summarise the meeting notes."}
    assert check_example(echoed, OutputSpec(), [DESCRIPTION]) == (None, "echo")
