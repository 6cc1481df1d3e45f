"""`loraforge serve`: the OpenAI-compatible multi-LoRA server."""

from pathlib import Path

import typer

from loraforge.cli.main import app
from loraforge.errors import ConfigError
from loraforge.serve.limits import WEIGHT_FORMATS
from loraforge.serve.ray_serve.options import RayServeOptions
from loraforge.serve.spec import ADMIN_API_KEY_ENV, API_KEY_ENV, HOST, PORT, ServerSettings

_SET = ServerSettings()  # the defaults of the server's flags (also those of a deployment file)
_RAY = RayServeOptions()  # the defaults of the --ray flags


@app.command()
def serve(
    model: str = typer.Option(_SET.model, "--model", "-m", help="Alias, HF dir, .gguf or hub id."),
    adapter_dir: Path | None = typer.Option(
        None, "--adapter-dir", help="One PEFT folder per adapter; the folder name is the adapter name."
    ),
    host: str = typer.Option(HOST, "--host"),
    port: int = typer.Option(PORT, "--port", min=0, max=65535, help="0 = any free port."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar=API_KEY_ENV, help="Require 'Authorization: Bearer KEY' on /v1."
    ),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16"),
    weights: str = typer.Option(
        _SET.weights,
        "--weights",
        help=f"Base weights in memory: {' | '.join(WEIGHT_FORMATS)} (int8/int4: CPU; see README).",
    ),
    adapters: list[str] = typer.Option(
        [], "--adapter", help="Extra adapter by path: --adapter NAME=DIR (repeatable)."
    ),
    max_adapters: int = typer.Option(
        _SET.max_adapters, "--max-adapters", min=1, help="Resident adapters (LRU beyond)."
    ),
    max_adapter_mb: int = typer.Option(
        _SET.max_adapter_mb, "--max-adapter-mb", min=1, help="Resident adapter memory (LRU)."
    ),
    max_num_seqs: int = typer.Option(
        _SET.max_num_seqs, "--max-num-seqs", min=1, help="Sequences in the running batch."
    ),
    max_waiting: int = typer.Option(
        _SET.max_waiting, "--max-waiting", min=1, help="Queued requests before 429."
    ),
    kv_cache_mb: int = typer.Option(
        _SET.kv_cache_mb, "--kv-cache-mb", min=1, help="Memory for the KV cache."
    ),
    prefix_cache: bool = typer.Option(
        _SET.prefix_cache,
        "--prefix-cache/--no-prefix-cache",
        help="Prefill a prompt start shared with earlier requests once.",
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for torch."),
    admin_api_key: str | None = typer.Option(
        None,
        "--admin-api-key",
        envvar=ADMIN_API_KEY_ENV,
        help="Key for POST/DELETE /v1/adapters; enables loading adapters from a server path.",
    ),
    adapter_root: Path | None = typer.Option(
        None, "--adapter-root", help="Adapters loaded by path at run time must lie under this folder."
    ),
    allow_hub_adapters: bool = typer.Option(
        _SET.allow_hub_adapters,
        "--allow-hub-adapters",
        help="Let a request name a Hugging Face Hub adapter (org/name), downloaded on first use.",
    ),
    hub_max_mb: int = typer.Option(
        _SET.hub_max_mb, "--hub-max-mb", min=1, help="Largest hub adapter downloaded."
    ),
    hub_timeout: float = typer.Option(
        _SET.hub_timeout, "--hub-timeout", min=1, help="Seconds one hub adapter download may take."
    ),
    max_body_bytes: int = typer.Option(
        _SET.max_body_bytes, "--max-body-bytes", min=1, help="Largest request body (413 beyond)."
    ),
    max_prompt_tokens: int | None = typer.Option(
        _SET.max_prompt_tokens, "--max-prompt-tokens", min=1, help="Longest prompt [default: the context]."
    ),
    max_tokens: int | None = typer.Option(
        _SET.max_tokens, "--max-tokens", min=1, help="Largest max_tokens [default: the context]."
    ),
    max_stop_sequences: int = typer.Option(
        _SET.max_stop_sequences, "--max-stop-sequences", min=0, help="Stop strings per request."
    ),
    max_stop_chars: int = typer.Option(
        _SET.max_stop_chars, "--max-stop-chars", min=1, help="Length of one stop string."
    ),
    max_adapter_rank: int = typer.Option(
        _SET.max_adapter_rank, "--max-adapter-rank", min=1, help="Highest LoRA rank of a loaded adapter."
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
    if precision not in {"auto", "fp32", "bf16"}:
        raise ConfigError(f"--precision must be auto, fp32 or bf16, not '{precision}'")
    extra = {}
    for spec in adapters:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--adapter expects NAME=DIR, got '{spec}'")
        extra[name] = Path(path)
    settings = ServerSettings.from_flags(
        model=model,
        precision=precision,
        weights=weights,
        adapter_dir=adapter_dir,
        adapters=extra,
        adapter_root=adapter_root,
        max_adapters=max_adapters,
        max_adapter_mb=max_adapter_mb,
        max_num_seqs=max_num_seqs,
        max_waiting=max_waiting,
        kv_cache_mb=kv_cache_mb,
        prefix_cache=prefix_cache,
        threads=threads,
        allow_hub_adapters=allow_hub_adapters,
        hub_max_mb=hub_max_mb,
        hub_timeout=hub_timeout,
        max_body_bytes=max_body_bytes,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens=max_tokens,
        max_stop_sequences=max_stop_sequences,
        max_stop_chars=max_stop_chars,
        max_adapter_rank=max_adapter_rank,
    )
    spec = settings.spec(api_key, admin_api_key)
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
    described = f"{engine.model_name} ({engine.dtype}, weights {engine.weight_format})"
    typer.echo(f"serving {described} on http://{host}:{port}/v1", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
