"""`loraforge ui`: the web dashboard over the store (also mountable in the gateway with `--ui`)."""

from pathlib import Path

import typer

from loraforge.cli.dataset import STORE_HELP
from loraforge.cli.gateway import is_loopback
from loraforge.cli.main import app
from loraforge.errors import ConfigError
from loraforge.ui.settings import DEFAULT_PORT, WINDOW_DAYS

UI_KEY_ENV = "LORAFORGE_UI_API_KEY"


@app.command()
def ui(
    store: str | None = typer.Option(None, "--store", help=STORE_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=0, max=65535),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar=UI_KEY_ENV, help="Key a browser (sign-in form) or client must give."
    ),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Folder of training runs to show."),
    serve_url: str | None = typer.Option(
        None, "--serve-url", help="A `loraforge serve` base URL whose /metrics the serving page shows."
    ),
    days: int = typer.Option(WINDOW_DAYS, "--days", min=1, max=365, help="Days the charts cover."),
    insecure_no_api_key: bool = typer.Option(
        False,
        "--insecure-no-api-key",
        help="Listen beyond loopback without --api-key: anyone who reaches it can change routes and post "
        "feedback that becomes training data.",
    ),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the dashboard: tasks, a task's loop, calls, datasets, runs, comparisons, serving."""
    import uvicorn

    from loraforge.store.store import Store
    from loraforge.ui import UISettings, create_ui_app

    if not api_key and not is_loopback(host) and not insecure_no_api_key:
        raise ConfigError(
            f"--host {host} is reachable from other machines and no --api-key is set: anyone could change "
            f"routes and post feedback that becomes training data; set --api-key (or {UI_KEY_ENV}), or pass "
            "--insecure-no-api-key"
        )
    if serve_url is not None and not serve_url.startswith(("http://", "https://")):
        raise ConfigError(f"--serve-url {serve_url!r} must start with http:// or https://")
    opened = Store(store)  # fails here, with one line, when the store cannot be opened
    settings = UISettings(
        store_url=store, api_key=api_key, runs_dir=runs_dir, serve_url=serve_url, window_days=days, warm=True
    )
    typer.echo(f"loraforge dashboard on http://{host}:{port}/ (store {opened!r})", err=True)
    uvicorn.run(create_ui_app(settings, opened), host=host, port=port, log_level=log_level, access_log=False)
