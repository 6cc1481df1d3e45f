"""`loraforge export merged`: the merged model loads in plain transformers and generates what base + adapter
generate under PEFT."""

import sys

import pytest
import torch
import yaml

from loraforge.errors import ConfigError, ModelNotFoundError
from loraforge.export import export_merged
from tests.serve.conftest import make_adapter


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    """A run directory as `loraforge train` leaves it: the resolved config and the adapter."""
    run = tmp_path_factory.mktemp("run")
    make_adapter(tiny_model_dir, run / "adapter", r=8, seed=7)
    (run / "config.yaml").write_text(yaml.safe_dump({"base_model": str(tiny_model_dir)}))
    return run


def test_the_merged_model_generates_what_base_plus_adapter_generate(run_dir, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = export_merged(run_dir, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob("*.bin")) and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3], [8, 8, 120, 64, 1, 30]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )
        kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(merged.generate(ids, **kwargs), reference.generate(input_ids=ids, **kwargs))
        with (
            reference.disable_adapter()
        ):  # the adapter matters, so the test could catch a merge that drops it
            assert not torch.allclose(reference(input_ids=ids).logits, merged(input_ids=ids).logits)


def test_an_adapter_folder_alone_names_its_base_model(run_dir, tmp_path):
    out = export_merged(run_dir / "adapter", tmp_path / "merged", dtype="bf16")
    assert (out / "config.json").is_file()


def test_mistakes_are_errors_that_say_what(run_dir, tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a run directory nor a PEFT adapter"):
        export_merged(tmp_path, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        export_merged(run_dir, tmp_path / "full")
    with pytest.raises(ConfigError, match="--dtype"):
        export_merged(run_dir, tmp_path / "out", dtype="int3")


def test_the_cli_exits_2_with_one_line(monkeypatch, capsys, tmp_path):
    from loraforge.cli.main import main

    monkeypatch.setattr(
        sys, "argv", ["loraforge", "export", "merged", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
