import pytest

from loraforge.config import load_config, validate_config
from loraforge.config.loading import parse_override
from loraforge.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults(tmp_path):
    config = load_config(write(tmp_path, "data:\n  train: t.jsonl\n"))
    assert config.base_model == "smollm2-135m"
    assert config.adapter.target_modules == "all-linear"
    assert config.trainer.precision == "auto"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("data:\n  train: t.jsonl\n  trian: x\n", "data.trian: unknown key"),
        ("data:\n  train: t.jsonl\ntrainer:\n  learning_rate: -1\n", "trainer.learning_rate"),
        ("data:\n  train: t.jsonl\ntrainer:\n  precision: fp8\n", "trainer.precision"),
        ("data:\n  train: t.jsonl\nadapter:\n  r: 0\n", "adapter.r"),
        ("prompt:\n  template: x\n", "data: required key is missing"),
        ("data:\n  train: t.jsonl\nevaluation:\n  task: classification\n  metrics: [rouge_l]\n", "rouge_l"),
        ("data:\n  train: t.jsonl\nadapter:\n  target_modules: []\n", "adapter.target_modules"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_errors_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert needle in str(error.value)


def test_set_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = write(tmp_path, "data:\n  train: t.jsonl\n")
    config = load_config(path, ["trainer.learning_rate=1e-4", "adapter.target_modules=[q_proj, v_proj]"])
    assert config.trainer.learning_rate == pytest.approx(1e-4)
    assert config.adapter.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        load_config(path, ["trainer.batch_size=zero"])
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("trainer.batch_size")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))


def test_target_template_replaces_column():
    config = validate_config({"data": {"train": "t.jsonl"}, "target": {"template": "{a} -> {b}"}})
    assert config.target.column is None
    assert config.target.template == "{a} -> {b}"


def test_relative_paths_fall_back_to_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text("{}\n")
    monkeypatch.chdir("/")
    config = load_config(write(tmp_path, "data:\n  train: train.jsonl\n"))
    assert config.data.train == tmp_path / "train.jsonl"
