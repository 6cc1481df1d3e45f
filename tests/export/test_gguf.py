"""`loraforge export gguf`: llama.cpp loads the merged model we write and generates what we generate (f32,
greedy), and the adapter alone becomes a GGUF LoRA. llama.cpp's converters and `llama-simple` come from the
llama-cpp-python source distribution and are built once, then cached (the first run builds for minutes)."""

import subprocess

import pytest
import torch

from loraforge.errors import ConfigError
from loraforge.export.gguf import export_gguf

pytestmark = pytest.mark.slow  # builds llama.cpp on a machine's first run; reads SmolLM2's tokenizer
PROMPT = "The bank transfer"


def _reference(run, base, max_new: int) -> str:
    """Our greedy continuation of PROMPT: base + adapter under PEFT, fp32, up to the first EOS."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), run / "adapter"
    )
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.eval().generate(
            ids, max_new_tokens=max_new, do_sample=False, eos_token_id=tokenizer.eos_token_id
        )
    new = out[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new)


def test_llama_cpp_generates_what_we_generate_from_the_merged_gguf(run_dir, tmp_path):
    from loraforge.export.llamacpp import tool

    run, base = run_dir
    out = export_gguf(run, tmp_path / "merged.gguf", base_model=str(base))
    done = subprocess.run(
        [str(tool("llama-simple")), "-m", str(out), "-n", "8", PROMPT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(PROMPT)
    expected = _reference(run, base, 8)
    assert expected  # a random model that stopped at once would prove nothing
    assert done.stdout[len(PROMPT) :].rstrip("\n") == expected


def test_the_adapter_alone_becomes_a_gguf_lora(run_dir, tmp_path):
    from gguf import GGUFReader

    run, base = run_dir
    out = export_gguf(run, tmp_path / "lora.gguf", base_model=str(base), lora_only=True)
    reader = GGUFReader(out)
    fields = {
        name: field.contents()
        for name, field in reader.fields.items()
        if name.startswith(("general.type", "adapter."))
    }
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names


def test_quantized_files_are_smaller_and_load_and_mistakes_are_named(run_dir, tmp_path):
    from loraforge.export.llamacpp import tool

    run, base = run_dir
    full = export_gguf(run, tmp_path / "f32.gguf", base_model=str(base))
    small = export_gguf(run, tmp_path / "q8.gguf", base_model=str(base), quant="q8_0")
    assert small.stat().st_size < full.stat().st_size / 2
    q4 = export_gguf(run, tmp_path / "q4.gguf", base_model=str(base), quant="q4_k_m")  # via llama-quantize
    assert q4.stat().st_size < small.stat().st_size
    done = subprocess.run(
        [str(tool("llama-simple")), "-m", str(q4), "-n", "4", PROMPT], capture_output=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.decode().startswith(PROMPT)
    with pytest.raises(ConfigError, match="exists"):
        export_gguf(run, small, base_model=str(base))
    with pytest.raises(ConfigError, match="--quant"):
        export_gguf(run, tmp_path / "x.gguf", base_model=str(base), quant="q4_k_m", lora_only=True)
