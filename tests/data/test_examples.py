import pytest

from loraforge.config.schema import PromptConfig, TargetConfig
from loraforge.data.examples import ExampleBuilder
from loraforge.data.tokenize import IGNORE_INDEX, tokenize_example
from loraforge.errors import DataError
from loraforge.models import load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(resolve_model(str(tiny_model_dir)))


def test_column_template_with_chat_wrapping(tokenizer):
    builder = ExampleBuilder(
        PromptConfig(template="Message: {text}\nIntent:", system="Be brief."),
        TargetConfig(column="label"),
        tokenizer,
    )
    example = builder.build({"text": "where is my card", "label": "card_arrival"})
    assert example.prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nMessage: where is my card\nIntent:<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert example.completion == "card_arrival"


def test_raw_prompt_and_target_template(tokenizer):
    builder = ExampleBuilder(
        PromptConfig(template="Q: {q}\nA:", chat_template=False),
        TargetConfig(template=" {a} (#{n})"),
        tokenizer,
    )
    example = builder.build({"q": "2+3?", "a": "five", "n": 5})
    assert example.prompt == "Q: 2+3?\nA:"
    assert example.completion == " five (#5)"


def test_chat_record_trains_on_last_assistant_message(tokenizer):
    builder = ExampleBuilder(PromptConfig(), TargetConfig(), tokenizer)
    record = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
    }
    example = builder.build(record)
    assert (
        example.prompt
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert example.completion == "hello"
    with pytest.raises(DataError, match="end with an assistant"):
        builder.build({"messages": [{"role": "user", "content": "hi"}]})


def test_missing_column_is_named(tokenizer):
    builder = ExampleBuilder(PromptConfig(template="{text}"), TargetConfig(column="label"), tokenizer)
    with pytest.raises(DataError, match="prompt.template uses column 'text'"):
        builder.build({"query": "x", "label": "y"})
    with pytest.raises(DataError, match="target.column 'label'"):
        builder.build({"text": "x"})


def test_mask_covers_prompt_exactly(tokenizer):
    builder = ExampleBuilder(
        PromptConfig(template="Message: {text}\nIntent:"), TargetConfig(column="label"), tokenizer
    )
    example = builder.build({"text": "activate my card", "label": "activate_my_card"})
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    tokenized = tokenize_example(example, tokenizer, max_length=512)
    assert tokenized.input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert tokenized.labels == [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]


def test_truncation_keeps_the_completion_and_cuts_the_prompt_from_the_left(tokenizer):
    builder = ExampleBuilder(
        PromptConfig(template="{text}", chat_template=False), TargetConfig(column="label"), tokenizer
    )
    example = builder.build({"text": "the quick brown fox " * 20, "label": "card_arrival"})
    full = tokenize_example(example, tokenizer, max_length=10_000)
    cut = tokenize_example(example, tokenizer, max_length=20)
    assert len(cut) == 20
    assert cut.input_ids == full.input_ids[-20:]
    assert cut.labels == full.labels[-20:]
