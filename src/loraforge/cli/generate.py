"""`loraforge generate`: a quick sanity check of a base model (and optionally an adapter) on one prompt."""

from pathlib import Path

import typer

from loraforge.cli.main import app
from loraforge.models.aliases import DEFAULT_MODEL


@app.command()
def generate(
    prompt: str = typer.Argument(
        ..., help="User message; the model's chat template is applied unless --raw."
    ),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Alias, local HF dir, .gguf file or hub id."
    ),
    adapter: Path | None = typer.Option(None, "--adapter", help="A PEFT adapter directory to apply."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, max=4096),
    system: str | None = typer.Option(None, "--system", help="Optional system message."),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as-is, without the chat template."),
) -> None:
    """Generate a greedy answer to PROMPT."""
    from loraforge.inference.hf import GenerationModel

    generator = GenerationModel.load(model, adapter=adapter)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    text = prompt if raw else generator.chat_prompt(messages)
    typer.echo(generator.generate([text], max_new_tokens=max_new_tokens)[0])
