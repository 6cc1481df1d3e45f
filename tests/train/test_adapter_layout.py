"""A trained adapter has the layout other multi-LoRA servers load (vLLM's `LoRAModel.from_local_checkpoint`,
LoRAX's PEFT loader), not only plain `peft`: users carry adapters between servers."""

import json
import re

from safetensors import safe_open

from loraforge.train.run import run_training

LLAMA_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
# vLLM: `base_model.model.` + the module path + `.lora_A.weight` / `.lora_B.weight`, no PEFT adapter name.
KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


def test_the_adapter_has_the_layout_vllm_and_lorax_load(make_config, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    run_training(make_config(max_steps=2), out, evaluate=False, show_progress=False)
    adapter = out / "adapter"
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not list(adapter.glob("*.bin")) and not list(adapter.glob("*.pt"))  # servers prefer, we allow only
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert config["bias"] == "none"  # vLLM refuses LoRA biases unless started with a flag
    assert not config.get("use_dora") and not config.get("modules_to_save")  # both unsupported by vLLM/LoRAX
    targets = set(config["target_modules"])
    assert targets and targets <= LLAMA_LORA_MODULES
    assert config["base_model_name_or_path"]  # LoRAX checks the adapter against the base it serves
    model_config = json.loads((tiny_model_dir / "config.json").read_text())
    found: dict[tuple[int, str], dict[str, tuple[int, ...]]] = {}
    with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
        assert weights.metadata().get("format") == "pt"
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a dict)
            match = KEY.match(key)
            assert match, f"{key} is not a vLLM/LoRAX LoRA weight name"
            layer, _, module, ab = match.groups()
            found.setdefault((int(layer), module), {})[ab] = tuple(weights.get_slice(key).get_shape())
    layers = model_config["num_hidden_layers"]
    assert set(found) == {(layer, module) for layer in range(layers) for module in targets}
    for shapes in found.values():
        assert shapes["A"][0] == config["r"] and shapes["B"][1] == config["r"]
