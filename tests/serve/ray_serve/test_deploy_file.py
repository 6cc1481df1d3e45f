"""`loraforge deploy ray FILE.yaml`: the file is serve --ray's flags; mistakes are one line and exit 2."""

from pathlib import Path

import pytest
import typer.main
import yaml

from loraforge.serve.ray_serve.deploy_file import RayDeployment, load_deployment
from loraforge.serve.spec import ServerSettings
from tests.cli.test_errors import run_cli

EXAMPLE = Path(__file__).parents[3] / "examples" / "deploy" / "ray.yaml"
KEYS = {"LORAFORGE_API_KEY": "k", "LORAFORGE_ADMIN_API_KEY": "admin"}


def write(tmp_path, **settings) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A working directory with the example's adapter folder, and its keys in the environment."""
    (tmp_path / "adapters").mkdir()
    monkeypatch.chdir(tmp_path)
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def test_the_example_file_checks(folders, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "deploy", "ray", str(EXAMPLE), "--check")
    assert code == 0, err
    assert "smollm2-135m on a local Ray cluster: autoscale 1..2, 8 adapters per replica" in out
    deployment = load_deployment(EXAMPLE)
    options = deployment.options()
    assert (options.autoscale, options.max_adapters_per_replica) == ((1, 2), 8)
    spec = deployment.server_spec()
    assert (spec.api_key, spec.admin_api_key) == ("k", "admin")
    assert spec.engine.adapter_dir == Path("adapters") and spec.max_waiting == 256


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"replica": 2}, "replica: unknown key"),
        ({"replicas": 2, "autoscale": {"min": 0, "max": 2}}, "give replicas or autoscale, not both"),
        ({"autoscale": {"min": 3, "max": 2}}, "min (3) is more than max (2)"),
        ({"autoscale": {"min": 0, "max": 2, "target": 1}}, "autoscale.target: unknown key"),
        ({"replicas": 0}, "replicas: Input should be greater than or equal to 1"),
        ({"port": 70000}, "port: Input should be less than or equal to 65535"),
        ({"precision": "fp8"}, "precision: Input should be 'auto', 'fp32' or 'bf16'"),
        ({"adapter_dir": "missing"}, "error: adapter_dir /"),
        ({"api_key_env": "H15_UNSET_KEY"}, "api_key_env: the environment variable H15_UNSET_KEY is not set"),
    ],
)
def test_mistakes_exit_2_with_one_line(folders, monkeypatch, capsys, settings, needle):
    monkeypatch.delenv("H15_UNSET_KEY", raising=False)
    path = write(folders, **settings)
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "ray", str(path), "--check")
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_or_non_mapping_file_is_one_line(folders, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "ray", "nowhere.yaml", "--check")
    assert (code, err.strip()) == (2, "error: deployment file not found: nowhere.yaml")
    (folders / "list.yaml").write_text("- 1\n")
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "ray", "list.yaml", "--check")
    assert code == 2 and "must be a YAML mapping" in err


def test_relative_paths_are_taken_from_the_file_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "conf"
    (conf / "ads" / "one").mkdir(parents=True)
    path = write(conf, adapter_dir="ads", adapters={"one": "ads/one"}, replicas=3)
    deployment = load_deployment(path)
    assert deployment.adapter_dir == conf / "ads" and deployment.adapters == {"one": conf / "ads" / "one"}
    assert deployment.options().replicas == 3 and deployment.options().autoscale is None
    spec = deployment.server_spec(environ={})  # default key variables unset: no keys
    assert (spec.api_key, spec.admin_api_key) == (None, None)


def test_file_keys_are_the_serve_flags_with_their_defaults():
    """One source of truth: every server key of the file is a `loraforge serve` flag with the same default,
    and the --ray flags are the file's Ray keys."""
    from loraforge.cli.main import _register_commands, app

    _register_commands()
    command = typer.main.get_command(app).commands["serve"]
    flags = {p.name: p for p in command.params if p.opts[0].startswith("--")}
    for name, field in ServerSettings.model_fields.items():
        option = flags[name]
        if name == "adapters":
            assert option.opts == ["--adapter"]
            continue
        default = field.get_default(call_default_factory=True)
        assert option.default == default, name
    ray_keys = set(RayDeployment.model_fields) - set(ServerSettings.model_fields)
    assert {"replicas", "max_adapters_per_replica", "replica_cpus", "ray_address", "host", "port"} < ray_keys
    assert {"replicas", "max_adapters_per_replica", "replica_cpus", "ray_address", "host", "port"} < set(
        flags
    )


def test_a_flag_value_the_settings_refuse_names_the_flag():
    from loraforge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--max-num-seqs: Input should be greater than or equal to 1$"):
        ServerSettings.from_flags(max_num_seqs=0)
