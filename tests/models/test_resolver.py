import pytest

from loraforge.errors import ModelNotFoundError
from loraforge.models import load_causal_lm, load_tokenizer, resolve_model


def test_local_hf_directory(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.path == tiny_model_dir
    tokenizer = load_tokenizer(resolved)
    assert tokenizer.chat_template
    assert load_causal_lm(resolved).config.num_hidden_layers == 2


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_unknown_name_lists_what_is_accepted():
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        resolve_model("not a model")


def test_hub_id_offline_fails_with_a_clear_message():
    # HF_HUB_OFFLINE=1 is set for the whole test session: this exercises the real download path offline.
    with pytest.raises(ModelNotFoundError, match="could not download 'someorg/some-model'"):
        resolve_model("someorg/some-model")


@pytest.mark.slow
def test_embedded_smollm2_converts_once_and_answers_sensibly(loraforge_home):
    import time

    from loraforge.inference.hf import GenerationModel

    resolved = resolve_model("smollm2-135m")
    assert (resolved.path / "model.safetensors").is_file()
    assert resolved.path.is_relative_to(loraforge_home)
    started = time.perf_counter()
    assert resolve_model("smollm2-135m") == resolved
    assert time.perf_counter() - started < 1.0  # cached: no second dequantisation
    generator = GenerationModel.load("smollm2-135m", precision="fp32")
    prompt = generator.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    answer = generator.generate([prompt], max_new_tokens=20)[0]
    assert "Paris" in answer
