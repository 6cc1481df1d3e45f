"""`loraforge serve`: the OpenAI-compatible multi-LoRA server."""

from pathlib import Path

import typer

from loraforge.cli.main import app
from loraforge.errors import ConfigError
from loraforge.models.aliases import DEFAULT_MODEL
from loraforge.serve.limits import MAX_ADAPTER_BYTES, MAX_ADAPTERS, ServeLimits

_LIM = ServeLimits()  # the defaults of every limit flag


@app.command()
def serve(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Alias, HF dir, .gguf or hub id."),
    adapter_dir: Path | None = typer.Option(
        None, "--adapter-dir", help="One PEFT folder per adapter; the folder name is the adapter name."
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="0 = any free port."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="LORAFORGE_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1."
    ),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16"),
    adapters: list[str] = typer.Option(
        [], "--adapter", help="Extra adapter by path: --adapter NAME=DIR (repeatable)."
    ),
    max_adapters: int = typer.Option(
        MAX_ADAPTERS, "--max-adapters", min=1, help="Resident adapters (LRU beyond)."
    ),
    max_adapter_mb: int = typer.Option(
        MAX_ADAPTER_BYTES >> 20, "--max-adapter-mb", min=1, help="Resident adapter memory (LRU)."
    ),
    max_num_seqs: int = typer.Option(128, "--max-num-seqs", min=1, help="Sequences in the running batch."),
    max_waiting: int = typer.Option(256, "--max-waiting", min=1, help="Queued requests before 429."),
    kv_cache_mb: int = typer.Option(512, "--kv-cache-mb", min=1, help="Memory for the KV cache."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for torch."),
    admin_api_key: str | None = typer.Option(
        None,
        "--admin-api-key",
        envvar="LORAFORGE_ADMIN_API_KEY",
        help="Key for POST/DELETE /v1/adapters; enables loading adapters from a server path.",
    ),
    adapter_root: Path | None = typer.Option(
        None, "--adapter-root", help="Adapters loaded by path at run time must lie under this folder."
    ),
    allow_hub_adapters: bool = typer.Option(
        _LIM.allow_hub_adapters,
        "--allow-hub-adapters",
        help="Let a request name a Hugging Face Hub adapter (org/name), downloaded on first use.",
    ),
    hub_max_mb: int = typer.Option(
        _LIM.hub_max_bytes >> 20, "--hub-max-mb", min=1, help="Largest hub adapter downloaded."
    ),
    hub_timeout: float = typer.Option(
        _LIM.hub_timeout_s, "--hub-timeout", min=1, help="Seconds one hub adapter download may take."
    ),
    max_body_bytes: int = typer.Option(
        _LIM.max_body_bytes, "--max-body-bytes", min=1, help="Largest request body (413 beyond)."
    ),
    max_prompt_tokens: int | None = typer.Option(
        _LIM.max_prompt_tokens, "--max-prompt-tokens", min=1, help="Longest prompt [default: the context]."
    ),
    max_tokens: int | None = typer.Option(
        _LIM.max_tokens, "--max-tokens", min=1, help="Largest max_tokens [default: the context]."
    ),
    max_stop_sequences: int = typer.Option(
        _LIM.max_stop_sequences, "--max-stop-sequences", min=0, help="Stop strings per request."
    ),
    max_stop_chars: int = typer.Option(
        _LIM.max_stop_chars, "--max-stop-chars", min=1, help="Length of one stop string."
    ),
    max_adapter_rank: int = typer.Option(
        _LIM.max_adapter_rank, "--max-adapter-rank", min=1, help="Highest LoRA rank of a loaded adapter."
    ),
) -> None:
    """Serve the base model and its LoRA adapters with an OpenAI-compatible API."""
    import uvicorn

    from loraforge.serve.api import create_app
    from loraforge.serve.engine import EngineConfig
    from loraforge.serve.engine.async_engine import AsyncEngine

    if precision not in {"auto", "fp32", "bf16"}:
        raise ConfigError(f"--precision must be auto, fp32 or bf16, not '{precision}'")
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise ConfigError(f"--adapter-dir {adapter_dir} is not a directory")
    extra = {}
    for spec in adapters:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--adapter expects NAME=DIR, got '{spec}'")
        extra[name] = Path(path)
    if adapter_root is not None and not adapter_root.is_dir():
        raise ConfigError(f"--adapter-root {adapter_root} is not a directory")
    limits = ServeLimits(
        max_body_bytes=max_body_bytes,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens=max_tokens,
        max_stop_sequences=max_stop_sequences,
        max_stop_chars=max_stop_chars,
        max_adapter_rank=max_adapter_rank,
        allow_hub_adapters=allow_hub_adapters,
        hub_max_bytes=hub_max_mb << 20,
        hub_timeout_s=hub_timeout,
    )
    config = EngineConfig(
        model=model,
        precision=precision,
        adapter_dir=adapter_dir,
        max_adapters=max_adapters,
        max_adapter_bytes=max_adapter_mb << 20,
        max_num_seqs=max_num_seqs,
        kv_cache_bytes=kv_cache_mb << 20,
        num_threads=threads,
        limits=limits,
    )
    engine = AsyncEngine(config, max_waiting=max_waiting)
    for name, path in extra.items():
        engine.register_adapter(name, path)
    typer.echo(f"serving {engine.model_name} ({engine.dtype}) on http://{host}:{port}/v1", err=True)
    app = create_app(engine, api_key=api_key, admin_api_key=admin_api_key, adapter_root=adapter_root)
    uvicorn.run(app, host=host, port=port, log_level="info")
