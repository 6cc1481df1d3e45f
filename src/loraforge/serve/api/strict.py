"""What every request body of the API shares: unknown fields are refused by name, text must be valid
Unicode, and fields of OpenAI's API that this server does not implement are accepted only at a neutral
value."""

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator


def only(*neutral: object, why: str = "not supported by this server") -> AfterValidator:
    """A field of the OpenAI API we do not implement: accepted only at a value that changes nothing."""
    shown = " or ".join(repr(v) if v is not None else "null" for v in neutral)

    def check(value: object) -> object:
        # (True == 1 in Python, but `n: true` is not `n: 1`.)
        if not any(value is v or (value == v and type(value) is not bool) for v in neutral):
            raise ValueError(f"{why} (only {shown})")
        return value

    return AfterValidator(check)


Unsupported = Annotated[Any, only(None)]
NoTools = Annotated[Any, only(None, [], "none")]


def _valid_text(value: Any) -> Any:
    """JSON may carry unpaired UTF-16 surrogates (\\ud800) that no tokenizer can encode: a 400 here."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (it holds an unpaired surrogate)") from None
    elif isinstance(value, dict):
        for item in value.values():
            _valid_text(item)
    elif isinstance(value, list):
        for item in value:
            _valid_text(item)
    return value


class Strict(BaseModel):
    # A field we do not know is refused by name (400), never silently ignored.
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        return _valid_text(data)
