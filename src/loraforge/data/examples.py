"""Turn records into (prompt text, completion text) pairs with the config's templates."""

import string
from dataclasses import dataclass

from loraforge.config.schema import PromptConfig, TargetConfig
from loraforge.data.sources import is_chat_record
from loraforge.errors import DataError


@dataclass(frozen=True)
class Example:
    """One training or evaluation example as text; `prompt` already includes any chat template."""

    prompt: str
    completion: str


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def fill_template(template: str, record: dict, where: str) -> str:
    missing = [name for name in template_fields(template) if name not in record]
    if missing:
        raise DataError(
            f"{where} uses column '{missing[0]}' but the record has only: "
            f"{', '.join(map(str, record)) or 'nothing'}"
        )
    return template.format_map({key: "" if value is None else value for key, value in record.items()})


class ExampleBuilder:
    """Renders records with the prompt/target config and the tokenizer's chat template."""

    def __init__(self, prompt: PromptConfig, target: TargetConfig, tokenizer) -> None:
        self.prompt = prompt
        self.target = target
        self.tokenizer = tokenizer
        if prompt.chat_template and not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "prompt.chat_template is true but the base model's tokenizer has no chat template"
            )

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_text(self, record: dict) -> str:
        if is_chat_record(record):
            return self.chat_prompt(self._chat_context(record))
        user = fill_template(self.prompt.template, record, "prompt.template")
        if not self.prompt.chat_template:
            return user
        system = [{"role": "system", "content": self.prompt.system}] if self.prompt.system else []
        return self.chat_prompt(system + [{"role": "user", "content": user}])

    def target_text(self, record: dict) -> str:
        if is_chat_record(record):
            last = record["messages"][-1] if record["messages"] else {}
            if last.get("role") != "assistant":
                raise DataError("a chat record must end with an assistant message (the completion to learn)")
            return str(last.get("content") or "")
        if self.target.template is not None:
            return fill_template(self.target.template, record, "target.template")
        if self.target.column not in record:
            raise DataError(
                f"target.column '{self.target.column}' is not in the record "
                f"(columns: {', '.join(map(str, record))})"
            )
        return str(record[self.target.column])

    def build(self, record: dict) -> Example:
        return Example(self.prompt_text(record), self.target_text(record))

    def _chat_context(self, record: dict) -> list[dict]:
        messages = record["messages"]
        context = messages[:-1] if messages and messages[-1].get("role") == "assistant" else messages
        if not context:
            raise DataError("a chat record needs at least one message before the assistant's reply")
        return [{"role": m["role"], "content": m.get("content") or ""} for m in context]
