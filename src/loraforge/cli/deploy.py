"""`loraforge deploy ray FILE.yaml`: `loraforge serve --ray`, declared in a file."""

from pathlib import Path

import typer

from loraforge.cli.main import app

deploy_app = typer.Typer(help="Run a deployment declared in a file.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("ray")
def deploy_ray(
    path: Path = typer.Argument(..., metavar="CONFIG.yaml", help="The deployment file (examples/deploy/)."),
    check: bool = typer.Option(
        False, "--check", help="Validate the file and say what it would start; start nothing."
    ),
) -> None:
    """Serve replicas on Ray Serve as the file says, until interrupted (the file's keys are serve's flags)."""
    from loraforge.serve.ray_serve.deploy_file import load_deployment

    deployment = load_deployment(path)
    spec = deployment.server_spec()  # checks the folders and the key variables
    options = deployment.options()
    if check:
        typer.echo(f"ok: {deployment.summary()}")
        return
    from loraforge.serve.ray_serve.launch import import_ray, serve_until_interrupted

    import_ray()  # a clear error before anything starts when Ray is not installed
    typer.echo(f"deploying {deployment.summary()}", err=True)
    serve_until_interrupted(spec, options, deployment.host, deployment.port, deployment.ray_address)
