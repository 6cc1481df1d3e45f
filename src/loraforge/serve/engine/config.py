"""Engine settings."""

from dataclasses import dataclass, field
from pathlib import Path

from loraforge.serve.limits import DEFAULT_WEIGHTS, MAX_ADAPTER_BYTES, MAX_ADAPTERS, ServeLimits


@dataclass
class EngineConfig:
    """Everything an `Engine` is built from: the model, the device, cache and batch sizes, the adapter
    registry and bounds, and the request limits (serve/limits.py)."""

    model: str = "smollm2-135m"  # alias, local HF dir, .gguf file or hub id (see loraforge.models)
    precision: str = "auto"  # auto | fp32 | bf16 (auto: bf16 on AMX/AVX512-BF16 CPUs and CUDA)
    weights: str = DEFAULT_WEIGHTS  # base linear weights: one of WEIGHT_FORMATS (model/quant.py)
    device: str = "cpu"
    # A PEFT adapter added into the base weights at load: one adapter's evaluation then costs no LoRA work
    # per token (evaluate/engine_backend.py). Requests name the base model to get it.
    merged_adapter: Path | None = None
    block_size: int = 16  # tokens per KV-cache block
    kv_cache_bytes: int = 512 << 20  # memory for the KV cache, split into blocks
    num_kv_blocks: int | None = None  # overrides kv_cache_bytes (tests use a tiny cache to force preemption)
    max_num_seqs: int = 128  # sequences in the running batch
    max_num_batched_tokens: int = 2048  # prefill token budget per step (uncached tokens)
    prefix_cache: bool = True  # share the K/V of common prompt starts (block_manager.py)
    max_model_len: int | None = None  # context limit; default min(model's, 8192)
    adapter_dir: Path | None = None  # registry: one PEFT folder per adapter, folder name = adapter name
    max_adapters: int = MAX_ADAPTERS  # resident adapters (LRU beyond this)
    max_adapter_bytes: int = MAX_ADAPTER_BYTES  # resident adapter bytes (LRU beyond this)
    # Batched-matmul LoRA path (CUDA; CPU without the C++ kernels):
    # a copy of the batch's adapters, kept while the batch's set of adapters does not change, saves
    # re-gathering their weights in every layer of every step; it costs this much memory at most.
    # None: 4 GiB on CUDA (32 r=16 all-linear adapters of a 7B model), 512 MiB on CPU.
    lora_batch_cache_bytes: int | None = None
    num_threads: int | None = None  # torch intra-op threads on CPU; None = leave torch's default
    limits: ServeLimits = field(default_factory=ServeLimits)  # request and adapter limits, hub policy

    def lora_cache_bytes(self) -> int:
        """`lora_batch_cache_bytes`, or its default for the device."""
        if self.lora_batch_cache_bytes is not None:
            return self.lora_batch_cache_bytes
        return (4 << 30) if self.device.startswith("cuda") else (512 << 20)
