"""Structured output in the API: OpenAI's `response_format` and vLLM's `guided_choice` / `guided_json` /
`guided_regex` (in `extra_body`), turned into the engine's constraint for one request.

A JSON schema or regex is compiled in the thread pool, never on the event loop (xgrammar releases the GIL
while compiling, so the loop keeps running), and compiled grammars are cached (by xgrammar's compiler, keyed
by the grammar's text): a schema sent again costs nothing. A grammar
that cannot be built is a 400 naming the field; nothing reaches the engine, so no other request sees it."""

import json
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from loraforge.serve.api.errors import APIError
from loraforge.serve.api.strict import Strict
from loraforge.serve.engine.constraints import ChoiceConstraint, Constraint
from loraforge.serve.engine.grammar import GrammarError, Grammars

MAX_CHOICES = 4096  # guided_choice: more labels than any classifier has


class JsonSchemaSpec(Strict):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # None: any JSON object
    strict: bool | None = None


class ResponseFormat(Strict):
    """OpenAI's `response_format` (one model rather than a tagged union, so errors name plain paths)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only with it")
        return self


def _bad(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", "invalid_request_error", param)


def _requested(req) -> list[str]:
    """The structured-output fields a request sets (at most one may be)."""
    fmt = req.response_format
    fields = [] if fmt is None or fmt.type == "text" else ["response_format"]
    return fields + [
        f for f in ("guided_choice", "guided_json", "guided_regex") if getattr(req, f) is not None
    ]


def _choices(choices: list[str]) -> list[str]:
    if not choices:
        raise _bad("guided_choice", "must list at least one string")
    if len(choices) > MAX_CHOICES:
        raise _bad("guided_choice", f"at most {MAX_CHOICES} choices")
    if any(not c for c in choices):
        raise _bad("guided_choice", "choices must not be empty strings")
    return choices


def _compile(req, grammars: Grammars, field: str) -> Constraint:
    """The constraint of the structured-output `field` of `req`; runs in the thread pool (tokenizing,
    compiling)."""
    if field == "guided_choice":
        return ChoiceConstraint.from_strings(_choices(req.guided_choice), grammars.tokenizer)
    try:
        if field == "guided_regex":
            return grammars.regex(req.guided_regex)
        if field == "guided_json":
            schema = req.guided_json
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError as exc:
                    raise GrammarError(f"not valid JSON ({exc})") from None
            return grammars.json_schema(schema, strict=False)
        fmt = req.response_format
        if fmt.type == "json_object" or fmt.json_schema.schema_ is None:
            return grammars.json_object()
        return grammars.json_schema(fmt.json_schema.schema_, strict=bool(fmt.json_schema.strict))
    except GrammarError as exc:
        raise _bad(field, str(exc)) from None


async def constraint_for(req, grammars: Grammars) -> Constraint | None:
    """The constraint `req` asks for (None: free text); APIError 400 for a conflicting or invalid one."""
    fields = _requested(req)
    if not fields:
        return None
    if len(fields) > 1:
        raise _bad(
            fields[1], f"cannot be combined with {fields[0]} (one structured-output field per request)"
        )
    if req.ignore_eos:
        raise _bad(
            "ignore_eos", f"cannot be combined with {fields[0]} (the grammar decides where the output ends)"
        )
    return await run_in_threadpool(_compile, req, grammars, fields[0])
