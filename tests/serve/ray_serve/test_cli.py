"""`loraforge serve --ray` flag mistakes: exit 2 and one line, before any cluster starts."""

import pytest

from tests.cli.test_errors import run_cli


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("3,1", "need 0 <= MIN <= MAX and MAX >= 1"),
        ("0,0", "need 0 <= MIN <= MAX and MAX >= 1"),
        ("two", "--autoscale expects MIN,MAX"),
        ("1,-2", "--autoscale expects MIN,MAX"),
    ],
)
def test_bad_autoscale_exits_2_with_one_line(monkeypatch, capsys, tiny_model_dir, spec, needle):
    code, _, err = run_cli(
        monkeypatch, capsys, "serve", "--ray", "--model", str(tiny_model_dir), "--autoscale", spec
    )
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1


def test_replica_options_follow_the_flags():
    from loraforge.serve.ray_serve.options import RayServeOptions

    fixed = RayServeOptions(replicas=3, max_adapters_per_replica=4).deployment_options()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    scaling = RayServeOptions(autoscale=(0, 4)).deployment_options()["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["initial_replicas"]) == (0, 4, 1)
