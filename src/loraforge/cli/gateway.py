"""`loraforge gateway`: an OpenAI-compatible proxy in front of any upstream that records every call."""

import os
from pathlib import Path

import typer

from loraforge.cli.main import app
from loraforge.errors import ConfigError


@app.command()
def gateway(
    upstream_url: str = typer.Option(
        ..., "--upstream-url", help="The upstream's OpenAI base URL, e.g. https://api.openai.com/v1."
    ),
    upstream_api_key_env: str | None = typer.Option(
        None,
        "--upstream-api-key-env",
        help="Name of the environment variable holding the upstream's API key.",
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="Store URL (sqlite:///path or postgresql://...); default $LORAFORGE_STORE_URL "
        "or SQLite in $LORAFORGE_HOME.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8400, "--port", min=0, max=65535),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="LORAFORGE_GATEWAY_API_KEY", help="Key the gateway's own clients must send."
    ),
    spool: Path | None = typer.Option(None, "--spool", help="Spool file used while the store is down."),
    prices: Path | None = typer.Option(None, "--prices", help="YAML price table overriding the shipped one."),
    timeout: float = typer.Option(600.0, "--timeout", min=0.1, help="Upstream timeout in seconds."),
    sqlite_sync: str = typer.Option(
        "full",
        "--sqlite-sync",
        help="SQLite store: 'full' fsyncs every commit (survives power loss); 'normal' survives a gateway "
        "crash or SIGKILL but not a power cut, and is much faster on disks with slow fsync.",
    ),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
) -> None:
    """Proxy /v1/chat/completions and /v1/completions to UPSTREAM and log every call to the store."""
    import uvicorn

    from loraforge.gateway import GatewaySettings, create_app

    if not upstream_url.startswith(("http://", "https://")):
        raise ConfigError(f"--upstream-url {upstream_url!r} must start with http:// or https://")
    upstream_key = None
    if upstream_api_key_env:
        upstream_key = os.environ.get(upstream_api_key_env)
        if not upstream_key:
            raise ConfigError(
                f"--upstream-api-key-env: environment variable {upstream_api_key_env} is not set"
            )
    settings = GatewaySettings(
        upstream_url=upstream_url,
        upstream_api_key=upstream_key,
        api_key=api_key,
        store_url=store,
        spool_path=spool,
        prices_file=prices,
        timeout_s=timeout,
        sqlite_sync=sqlite_sync,
    )
    asgi = create_app(settings)
    typer.echo(f"loraforge gateway on http://{host}:{port}/v1 -> {upstream_url}", err=True)
    uvicorn.run(asgi, host=host, port=port, log_level=log_level, access_log=False)
