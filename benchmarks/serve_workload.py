"""The workload of benchmarks/serve_throughput.py (and vs_llamacpp.py): prompts, random PEFT adapters, and the
timed runs of the engine and of HF + PEFT. Imported by the scripts (this folder is first on their path)."""

import math
import statistics
import time
from pathlib import Path

import torch

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOPICS = [
    "my card",
    "a transfer",
    "the exchange rate",
    "a refund",
    "my PIN",
    "cash withdrawal",
    "top-up",
    "fees",
]


def prompts(tokenizer, n: int) -> list[list[int]]:
    """n chat prompts of ~30 tokens, all different."""
    out = []
    for i in range(n):
        msg = f"Question {i}: I have a problem with {TOPICS[i % len(TOPICS)]}. What should I do next?"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": msg}], tokenize=False, add_generation_prompt=True
        )
        out.append(tokenizer(text, add_special_tokens=False).input_ids)
    return out


def make_adapters(
    model_path: Path,
    root: Path,
    count: int,
    rank: int,
    device: str = "cpu",
    targets: list[str] = ALL_LINEAR,
    prefix: str = "bench",
) -> list[str]:
    """`count` random PEFT adapters of `targets`; lora_B randomised so that none is a no-op."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # fp32 on CPU; on a GPU the model's bf16 (a big model in fp32 would take long to write 100 times)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    names = []
    for i in range(count):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
                elif "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        names.append(f"{prefix}-{i:03d}")
        model.save_pretrained(root / names[-1])
    return names


def engine_run(engine, ids, adapters, max_tokens) -> tuple[float, float]:
    """(generated tokens/s, seconds) for all requests submitted at once."""
    from loraforge.serve.engine import SamplingParams

    start = time.perf_counter()
    seqs = engine.generate(
        ids, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True), adapters
    )
    secs = time.perf_counter() - start
    return sum(len(s.output_ids) for s in seqs) / secs, secs


def engine_batch1_decode(engine, ids, max_tokens) -> float:
    """Decode tokens/s of one request alone (time after its first token)."""
    from loraforge.serve.engine import SamplingParams

    seq = engine.add_request(ids, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    engine.step()  # prefill -> first token
    start = time.perf_counter()
    while engine.has_work():
        engine.step()
    return (len(seq.output_ids) - 1) / (time.perf_counter() - start)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hf_mixed(
    model_path, dtype, device, adapter_root, names, ids, adapters, max_tokens
) -> tuple[float, float]:
    """HF + PEFT: one left-padded batch, adapter chosen per row with `adapter_names`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    model = PeftModel.from_pretrained(base, adapter_root / names[0], adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(adapter_root / n, adapter_name=n)
    model.eval()
    width = max(len(i) for i in ids)
    input_ids = torch.tensor([[2] * (width - len(i)) + i for i in ids], device=device)
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
    kw = {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False, "pad_token_id": 2}
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, adapter_names=adapters, **kw)
    synchronize(device)
    secs = time.perf_counter() - start
    return (out.shape[1] - width) * len(ids) / secs, secs


def hf_batch1(model, ids, max_tokens) -> float:
    """HF generate decode tokens/s of one request (time after the first token)."""
    x = torch.tensor([ids], device=model.device)
    kw = {"do_sample": False, "pad_token_id": 2}
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(input_ids=x, max_new_tokens=1, min_new_tokens=1, **kw)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(input_ids=x, max_new_tokens=max_tokens, min_new_tokens=max_tokens, **kw)
        total = time.perf_counter() - t0
    return (max_tokens - 1) / (total - ttft)


def cold_load_ms(engine, ids, names) -> tuple[float, float]:
    """Median (cold request - warm request) latency for max_tokens=1, and the median cold request itself."""
    from loraforge.serve.engine import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    added, colds = [], []
    for k, name in enumerate(names):
        t0 = time.perf_counter()
        engine.generate([ids], params, [name])
        cold = time.perf_counter() - t0
        # The warm request has another start, of the same length: the prefix cache must not answer it.
        other = ids[k + 1 :] + ids[: k + 1]
        t0 = time.perf_counter()
        engine.generate([other], params, [name])
        warm = time.perf_counter() - t0
        added.append((cold - warm) * 1000)
        colds.append(cold * 1000)
    return statistics.median(added), statistics.median(colds)


RSS_CHILD = """
import json, sys, torch
from pathlib import Path
from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
root, names, threads = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
model, device = sys.argv[4], sys.argv[5]
def rss():  # on a GPU: the memory torch has allocated there
    if device.startswith('cuda'):
        return torch.cuda.memory_allocated()
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) * 1024
config = EngineConfig(model=model, device=device, adapter_dir=root, max_adapters=len(names),
                      num_threads=threads)
engine = Engine(config)
engine.generate([[1, 2, 3, 4]], SamplingParams(max_tokens=4, temperature=0))
before = rss()
engine.generate([[1, 2, 3, 4]] * len(names), SamplingParams(max_tokens=1, temperature=0), names)
after = rss()
print(json.dumps({'before': before, 'after': after, 'resident': len(engine.adapters.resident),
                  'adapter_bytes': engine.adapters.resident_bytes}))
"""


PEFT_DEFAULT = ["q_proj", "v_proj"]  # what LoraConfig targets on a Llama when target_modules is not given


def decode_step_s(engine, ids, adapters, max_tokens) -> tuple[float, float]:
    """Seconds per decode step of all requests together, and of it the seconds in LoRA (every call of the
    stacked weights' `add`, timed where it runs): the prefill steps are left out of both."""
    from loraforge.serve.engine import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    seqs = [engine.add_request(i, params, adapter=a) for i, a in zip(ids, adapters, strict=True)]
    while any(not s.output_ids for s in seqs):
        engine.step()
    weights, spent = engine.lora, [0.0]
    sync = torch.cuda.synchronize if weights.device.startswith("cuda") else lambda: None

    def timed_add(*args) -> None:
        sync()
        start = time.perf_counter()
        type(weights).add(weights, *args)
        sync()
        spent[0] += time.perf_counter() - start

    weights.add = timed_add  # the instance's attribute, looked up per call: removed below
    try:
        steps, start = 0, time.perf_counter()
        while engine.has_work():
            engine.step()
            steps += 1
    finally:
        del weights.add
    return (time.perf_counter() - start) / max(steps, 1), spent[0] / max(steps, 1)


def read_bandwidth(threads: int, mib: int = 512, repeats: int = 5) -> float:
    """Bytes/s this machine reads from memory: the best of `repeats` sums of an fp32 tensor far larger than
    any cache, on the engine's threads (a sum does one add per 4 bytes read, well below compute limits). The
    tensor lies in huge pages where the OS grants them, as the engine's weights do (model/huge_pages.py):
    there a sum reads ~15-25% faster than in 4 KiB pages, so the floor it sets is the lower one."""
    from loraforge.serve.model.huge_pages import huge_page_arena

    torch.set_num_threads(threads)
    arena = huge_page_arena(mib << 20)
    x = arena.view(torch.float32).fill_(1.0) if arena is not None else torch.ones(mib << 18)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def own_bytes(adapter_dir: Path, itemsize: int) -> int:
    """An adapter's own weights (its lora_A and lora_B, nothing padded) at the engine's element size."""
    from safetensors import safe_open

    total = 0
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            total += math.prod(f.get_slice(key).get_shape())
    return total * itemsize
