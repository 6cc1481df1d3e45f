"""`loraforge gateway`: an OpenAI-compatible proxy in front of any upstream that records every call."""

import ipaddress
import os
from pathlib import Path

import typer

from loraforge.cli.main import app
from loraforge.errors import ConfigError
from loraforge.fewshot.settings import DEFAULT_REFRESH_S
from loraforge.gateway.settings import MAX_BODY_BYTES, RECORD_TIMEOUT_S


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
    specialist_url: str | None = typer.Option(
        None,
        "--specialist-url",
        help="OpenAI base URL of the server hosting the adapters (`loraforge serve`), for routed tasks.",
    ),
    specialist_api_key_env: str | None = typer.Option(
        None, "--specialist-api-key-env", help="Name of the environment variable holding its API key."
    ),
    route_refresh: float = typer.Option(
        2.0, "--route-refresh", min=0.1, help="Seconds between re-reads of the routes from the store."
    ),
    fewshot_refresh: float = typer.Option(
        DEFAULT_REFRESH_S,
        "--fewshot-refresh",
        min=0.1,
        help="Seconds between re-reads of few-shot tasks' good examples (stage fewshot).",
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
    record_timeout: float = typer.Option(
        RECORD_TIMEOUT_S,
        "--record-timeout",
        min=0.1,
        help="Longest a call waits for the store before it is spooled instead (a hung database); also "
        "PostgreSQL's statement_timeout.",
    ),
    max_body_bytes: int = typer.Option(
        MAX_BODY_BYTES, "--max-body-bytes", min=1, help="Largest request body accepted (413 beyond)."
    ),
    insecure_no_api_key: bool = typer.Option(
        False,
        "--insecure-no-api-key",
        help="Listen beyond loopback without --api-key: anyone who reaches the gateway can then spend the "
        "upstream key and post feedback that becomes training data.",
    ),
    ui: bool = typer.Option(False, "--ui", help="Serve the dashboard (`loraforge ui`) at /ui too."),
    ui_runs_dir: Path = typer.Option(Path("runs"), "--ui-runs-dir", help="The dashboard's training runs."),
) -> None:
    """Proxy /v1/chat/completions and /v1/completions to UPSTREAM and log every call to the store."""
    import uvicorn

    from loraforge.gateway import GatewaySettings, create_app

    if not upstream_url.startswith(("http://", "https://")):
        raise ConfigError(f"--upstream-url {upstream_url!r} must start with http:// or https://")
    if specialist_url is not None and not specialist_url.startswith(("http://", "https://")):
        raise ConfigError(f"--specialist-url {specialist_url!r} must start with http:// or https://")
    upstream_key = key_from_env("--upstream-api-key-env", upstream_api_key_env)
    specialist_key = key_from_env("--specialist-api-key-env", specialist_api_key_env)
    _refuse_exposure(host, api_key, insecure_no_api_key, upstream_api_key_env)
    settings = GatewaySettings(
        upstream_url=upstream_url,
        upstream_api_key=upstream_key,
        api_key=api_key,
        store_url=store,
        spool_path=spool,
        prices_file=prices,
        timeout_s=timeout,
        sqlite_sync=sqlite_sync,
        max_body_bytes=max_body_bytes,
        record_timeout_s=record_timeout,
        specialist_url=specialist_url,
        specialist_api_key=specialist_key,
        route_refresh_s=route_refresh,
        fewshot_refresh_s=fewshot_refresh,
        ui=ui,
        ui_runs_dir=ui_runs_dir,
    )
    asgi = create_app(settings)
    if not api_key:
        _warn_no_key(host, upstream_api_key_env)
    typer.echo(f"loraforge gateway on http://{host}:{port}/v1 -> {upstream_url}", err=True)
    if ui:
        typer.echo(f"dashboard on http://{host}:{port}/ui/", err=True)
    uvicorn.run(asgi, host=host, port=port, log_level=log_level, access_log=False)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine (a name other than localhost counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _refuse_exposure(host: str, api_key: str | None, insecure: bool, upstream_key_env: str | None) -> None:
    """Without --api-key, listening beyond loopback needs the explicit override."""
    if not api_key and not is_loopback(host) and not insecure:
        raise ConfigError(
            f"--host {host} is reachable from other machines and no --api-key is set: anyone could "
            + ("spend the upstream key and " if upstream_key_env else "")
            + "post feedback that becomes training data; set --api-key (or LORAFORGE_GATEWAY_API_KEY), "
            "or pass --insecure-no-api-key"
        )


def _warn_no_key(host: str, upstream_key_env: str | None) -> None:
    at_stake = f"spend the upstream key in ${upstream_key_env} and " if upstream_key_env else ""
    typer.secho(
        f"WARNING: no --api-key: anyone who can connect to {host} can {at_stake}post feedback "
        "that becomes training data. Set --api-key (or LORAFORGE_GATEWAY_API_KEY).",
        err=True,
        fg="yellow",
        bold=True,
    )


def key_from_env(option: str, variable: str | None) -> str | None:
    """The API key held by environment variable `variable` (named by `option`); None when not asked for."""
    if not variable:
        return None
    key = os.environ.get(variable)
    if not key:
        raise ConfigError(f"{option}: environment variable {variable} is not set")
    if "\n" in key or "\r" in key:  # e.g. KEY=$(cat file) kept a newline
        raise ConfigError(f"{option}: {variable} contains a line break")
    return key
