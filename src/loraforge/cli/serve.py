"""`loraforge serve`: the OpenAI-compatible multi-LoRA server."""

from pathlib import Path

import typer

from loraforge.cli.main import app
from loraforge.errors import ConfigError
from loraforge.models.aliases import DEFAULT_MODEL
from loraforge.serve.limits import MAX_ADAPTER_BYTES, MAX_ADAPTERS, ServeLimits
from loraforge.serve.ray_serve.options import RayServeOptions

_LIM = ServeLimits()  # the defaults of every limit flag
_RAY = RayServeOptions()  # the defaults of the --ray flags


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
    prefix_cache: bool = typer.Option(
        True,
        "--prefix-cache/--no-prefix-cache",
        help="Prefill a prompt start shared with earlier requests once.",
    ),
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
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Run replicas of this server on Ray Serve behind one entry point (loraforge[ray]).",
    ),
    replicas: int = typer.Option(
        _RAY.replicas, "--replicas", min=1, help="--ray: a fixed number of replicas."
    ),
    autoscale: str | None = typer.Option(
        None, "--autoscale", metavar="MIN,MAX", help="--ray: scale on ongoing requests; MIN 0 scales to zero."
    ),
    max_adapters_per_replica: int = typer.Option(
        _RAY.max_adapters_per_replica,
        "--max-adapters-per-replica",
        min=1,
        help="--ray: adapters resident per replica (LRU); requests go to replicas that hold theirs.",
    ),
    replica_cpus: float = typer.Option(
        _RAY.replica_cpus, "--replica-cpus", min=0.01, help="--ray: Ray CPUs reserved per replica."
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="--ray: an existing cluster (auto, HOST:6379, ray://HOST:10001); default: start one.",
    ),
) -> None:
    """Serve the base model and its LoRA adapters with an OpenAI-compatible API."""
    from loraforge.serve.engine import EngineConfig
    from loraforge.serve.spec import ServerSpec

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
        prefix_cache=prefix_cache,
        num_threads=threads,
        limits=limits,
    )
    spec = ServerSpec(config, max_waiting, extra, api_key, admin_api_key, adapter_root)
    if ray:
        from loraforge.serve.ray_serve.launch import import_ray, serve_until_interrupted
        from loraforge.serve.ray_serve.options import parse_autoscale

        options = RayServeOptions(
            replicas=replicas,
            autoscale=parse_autoscale(autoscale) if autoscale is not None else None,
            max_adapters_per_replica=max_adapters_per_replica,
            replica_cpus=replica_cpus,
        )
        import_ray()  # a clear error before anything starts when Ray is not installed
        serve_until_interrupted(spec, options, host, port, ray_address)
        return
    import uvicorn

    engine, app = spec.build()
    typer.echo(f"serving {engine.model_name} ({engine.dtype}) on http://{host}:{port}/v1", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
