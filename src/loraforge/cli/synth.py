"""`loraforge synth generate|relabel`: training data from a teacher model behind an OpenAI-compatible API."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from loraforge.cli.main import app
from loraforge.errors import LoraforgeError

if TYPE_CHECKING:
    from loraforge.synth.report import Summary
    from loraforge.synth.teacher import TeacherClient, TeacherSettings
    from loraforge.synth.validation import OutputSpec

synth_app = typer.Typer(help="Generate or relabel training data with a teacher model.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")

TEACHER_URL = typer.Option(..., "--teacher-url", help="OpenAI-compatible base URL, e.g. http://host:8000/v1.")
TEACHER_MODEL = typer.Option(..., "--teacher-model", help="Model name sent to the teacher.")
API_KEY_ENV = typer.Option(None, "--teacher-api-key-env", help="Environment variable holding the API key.")
LABELS = typer.Option(None, "--labels", help="Label set: a JSON list, or one label per line.")
SCHEMA = typer.Option(None, "--output-schema", help="JSON Schema the output must match.")
OUT = typer.Option(..., "--out", help="Output JSONL; an existing file is resumed (appended to).")
FORMAT = typer.Option(
    "chat", "--format", help="chat: OpenAI fine-tuning messages; flat: input/output columns."
)
TEST_SET = typer.Option(None, "--test-set", help="JSONL whose inputs must not leak into the output.")
INPUT_FIELD = typer.Option(None, "--input-field", help="Input column of plain JSONL files (default: auto).")
THRESHOLD = typer.Option(0.8, "--near-dup-threshold", min=0.01, max=1.0, help="Char 4-gram Jaccard cut-off.")
MAX_RETRIES = typer.Option(5, "--max-retries", min=0, help="Retries per request on 429, 5xx and timeouts.")
TIMEOUT = typer.Option(120.0, "--timeout", min=0.1, help="Seconds to wait for one teacher answer.")
CONCURRENCY = typer.Option(4, "--concurrency", min=1, max=256, help="Teacher requests in flight.")
SUMMARY_JSON = typer.Option(None, "--summary-json", help="Also write the run summary to this JSON file.")


def resolve_description(value: str) -> str:
    """`--task-description` is a file's contents when it names an existing file, else the text itself."""
    path = Path(value).expanduser()
    if "\n" not in value and _is_file(path):
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise LoraforgeError(f"task description file {path} is empty")
        return text
    if " " not in value.strip() and path.suffix in (".txt", ".md"):
        raise LoraforgeError(f"task description file {path} does not exist")
    if not value.strip():
        raise LoraforgeError("--task-description is empty")
    return value.strip()


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a long description is "File name too long": it is text, not a path
        return False


def build_spec(labels: Path | None, schema: Path | None) -> OutputSpec:
    from loraforge.data.labels import load_labels
    from loraforge.synth.validation import OutputSpec, load_schema

    if labels and schema:
        raise LoraforgeError("pass either --labels or --output-schema, not both")
    return OutputSpec(
        labels=load_labels(labels) if labels else None, schema=load_schema(schema) if schema else None
    )


def teacher_settings(url: str, model: str, key_env: str | None, **kwargs: Any) -> TeacherSettings:
    from loraforge.synth.teacher import TeacherSettings, chat_completions_url

    chat_completions_url(url)  # validates the URL before any work
    api_key = None
    if key_env:
        api_key = os.environ.get(key_env)
        if not api_key:
            raise LoraforgeError(f"environment variable {key_env} (from --teacher-api-key-env) is not set")
    return TeacherSettings(url=url, model=model, api_key=api_key, **kwargs)


def check_format(fmt: str) -> str:
    if fmt not in ("chat", "flat"):
        raise LoraforgeError(f"--format must be 'chat' or 'flat', not '{fmt}'")
    return fmt


def run_with_teacher(
    settings: TeacherSettings,
    total: int | None,
    label: str,
    work: Callable[[TeacherClient, Callable[[int], None]], Awaitable[Summary]],
) -> Summary:
    """Check the teacher answers, then run `work` under a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from loraforge.synth.teacher import TeacherClient

    async def main() -> Summary:
        async with TeacherClient(settings) as teacher:
            await teacher.check_reachable()
            columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=Console(stderr=True)) as bar:
                task = bar.add_task(label, total=total)
                return await work(teacher, lambda done: bar.update(task, completed=done))

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        # Every saved row was flushed as it was written; the same command resumes from the file.
        raise typer.Abort() from None


def finish(summary: Summary, out: Path, summary_json: Path | None) -> None:
    """Print the summary; a teacher failure is an error (exit 2), an exhausted budget exits 1."""
    from rich.console import Console

    from loraforge.synth.report import render

    render(summary, Console())
    if summary_json:
        summary_json.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    if summary.error:
        raise LoraforgeError(
            f"{summary.error}; {summary.total_rows} rows saved in {out}; re-run the same command to resume"
        )
    if not summary.complete and summary.command == "generate":
        # SystemExit, not typer.Exit: non-standalone click turns Exit into a return value main() drops.
        raise SystemExit(1)


@synth_app.command("generate")
def generate_cmd(
    teacher_url: str = TEACHER_URL,
    teacher_model: str = TEACHER_MODEL,
    teacher_api_key_env: str | None = API_KEY_ENV,
    task_description: str = typer.Option(..., "--task-description", help="The task, as text or a file."),
    seed_examples: Path | None = typer.Option(
        None, "--seed-examples", help="JSONL of example inputs/outputs."
    ),
    labels: Path | None = LABELS,
    output_schema: Path | None = SCHEMA,
    n: int = typer.Option(..., "--n", min=1, help="Rows wanted in the output file."),
    out: Path = OUT,
    concurrency: int = CONCURRENCY,
    temperature: float = typer.Option(0.8, "--temperature", min=0.0, max=2.0),
    test_set: Path | None = TEST_SET,
    near_dup_threshold: float = THRESHOLD,
    per_request: int = typer.Option(
        5, "--per-request", min=1, max=50, help="Examples asked for per request."
    ),
    seeds_per_request: int = typer.Option(
        3, "--seeds-per-request", min=0, help="Seed examples shown per request."
    ),
    max_requests: int | None = typer.Option(
        None, "--max-requests", min=1, help="Request budget for this run."
    ),
    max_retries: int = MAX_RETRIES,
    timeout: float = TIMEOUT,
    max_tokens: int = typer.Option(1024, "--max-tokens", min=16, help="Token limit of one teacher answer."),
    fmt: str = FORMAT,
    input_field: str | None = INPUT_FIELD,
    seed: int = typer.Option(0, "--seed", help="Shuffles the seed-example rotation."),
    structured_output: bool = typer.Option(
        False,
        "--structured-output",
        help="Send a JSON Schema as response_format (for teachers with structured outputs).",
    ),
    summary_json: Path | None = SUMMARY_JSON,
) -> None:
    """Generate N new, validated, deduplicated examples with a teacher model."""
    from loraforge.synth.records import load_seeds, load_texts
    from loraforge.synth.synthesize import GenerateConfig, synthesize

    spec = build_spec(labels, output_schema)
    config = GenerateConfig(
        description=resolve_description(task_description),
        spec=spec,
        n=n,
        out=out,
        seeds=load_seeds(seed_examples, spec, input_field) if seed_examples else [],
        test_texts=load_texts(test_set, "test set", input_field) if test_set else [],
        fmt=check_format(fmt),
        per_request=per_request,
        seeds_per_request=seeds_per_request,
        concurrency=concurrency,
        near_dup_threshold=near_dup_threshold,
        max_requests=max_requests,
        shuffle_seed=seed,
        structured=structured_output,
    )
    settings = teacher_settings(
        teacher_url,
        teacher_model,
        teacher_api_key_env,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout_s=timeout,
        max_retries=max_retries,
    )
    summary = run_with_teacher(settings, n, "generating", lambda t, p: synthesize(config, t, p))
    finish(summary, out, summary_json)


@synth_app.command("relabel")
def relabel_cmd(
    teacher_url: str = TEACHER_URL,
    teacher_model: str = TEACHER_MODEL,
    teacher_api_key_env: str | None = API_KEY_ENV,
    inputs: Path = typer.Option(..., "--in", help="JSONL inputs: an input column, or chat 'messages'."),
    out: Path = OUT,
    labels: Path | None = LABELS,
    output_schema: Path | None = SCHEMA,
    task_description: str | None = typer.Option(
        None, "--task-description", help="The task, as text or a file."
    ),
    input_field: str | None = INPUT_FIELD,
    test_set: Path | None = TEST_SET,
    near_dup_threshold: float = THRESHOLD,
    concurrency: int = CONCURRENCY,
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, max=2.0),
    max_attempts: int = typer.Option(
        2, "--max-attempts", min=1, help="Asks per input when answers are invalid."
    ),
    max_retries: int = MAX_RETRIES,
    timeout: float = TIMEOUT,
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Token limit of one teacher answer."),
    fmt: str = FORMAT,
    summary_json: Path | None = SUMMARY_JSON,
) -> None:
    """Label existing inputs (plain JSONL or chat JSONL, e.g. a dataset from gateway logs) with a teacher."""
    from loraforge.synth.records import load_texts, read_records
    from loraforge.synth.relabel import RelabelConfig, relabel

    config = RelabelConfig(
        inputs=inputs,
        out=out,
        spec=build_spec(labels, output_schema),
        description=resolve_description(task_description) if task_description else None,
        input_field=input_field,
        test_texts=load_texts(test_set, "test set", input_field) if test_set else [],
        fmt=check_format(fmt),
        concurrency=concurrency,
        max_attempts=max_attempts,
        near_dup_threshold=near_dup_threshold,
    )
    total = len(
        read_records(inputs, "input file", input_field)
    )  # also reports a bad input file before any request
    settings = teacher_settings(
        teacher_url,
        teacher_model,
        teacher_api_key_env,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout_s=timeout,
        max_retries=max_retries,
    )
    summary = run_with_teacher(settings, total, "labeling", lambda t, p: relabel(config, t, p))
    finish(summary, out, summary_json)
