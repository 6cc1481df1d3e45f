"""Load the base model in the right dtype/device and wrap it with a fresh LoRA adapter (PEFT)."""

from dataclasses import dataclass

import torch

from loraforge.config.schema import AdapterConfig, TrainerConfig
from loraforge.errors import ConfigError
from loraforge.models import ResolvedModel, pick_dtype
from loraforge.train.fast_dropout import use_fast_dropout

EAGER_ATTENTION_MAX_LENGTH = 512


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: torch.dtype


def choose_placement(trainer: TrainerConfig) -> Placement:
    if trainer.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device is 'cuda' but no CUDA GPU is available")
    device = (
        "cuda"
        if trainer.device == "cuda" or (trainer.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    if trainer.quantization == "4bit" and device != "cuda":
        raise ConfigError("trainer.quantization '4bit' (QLoRA) needs a CUDA GPU; use 'none' on CPU")
    return Placement(device=device, dtype=pick_dtype(trainer.precision, device))


def linear_module_names(model) -> list[str]:
    """The short names (`q_proj`, ...) of the model's linear layers, the LM head excluded: what `all-linear`
    means. PEFT would save every layer's full path instead (`model.layers.0.self_attn.q_proj`, ...), which
    other servers' loaders read less reliably than the short names they document."""
    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head
        }
    )


def lora_config(adapter: AdapterConfig, model):
    from peft import LoraConfig, TaskType

    targets = adapter.target_modules
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=linear_module_names(model) if targets == "all-linear" else targets,
        bias="none",
    )


def load_base_for_training(model: ResolvedModel, trainer: TrainerConfig, placement: Placement):
    """The frozen base: weights stored in the compute dtype (bf16 on AMX: that is what makes matmuls fast)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": placement.dtype}
    if placement.device == "cpu" and trainer.max_seq_length <= EAGER_ATTENTION_MAX_LENGTH:
        # Measured on a SmolLM2 training step (batches of ~60 tokens): eager attention is ~10-20% faster
        # than SDPA on CPU, whose flash backward dominates at short lengths. Eager's T x T scores stay small.
        kwargs["attn_implementation"] = "eager"
    if trainer.quantization == "4bit":
        try:
            from transformers import BitsAndBytesConfig
        except ImportError as exc:  # pragma: no cover - CUDA only
            raise ConfigError(f"QLoRA needs bitsandbytes: pip install 'loraforge[cuda]' ({exc})") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=placement.dtype,
        )
        kwargs["device_map"] = {"": 0}
    base = AutoModelForCausalLM.from_pretrained(model.path, **kwargs)
    if trainer.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    else:
        base = base.to(placement.device)
    base.config.use_cache = False
    return base


def add_lora(base, adapter: AdapterConfig, fast_dropout: bool | None = None):
    """Wrap `base` with trainable LoRA weights, kept in fp32 (PEFT's default) for stable updates.
    `fast_dropout`: use FastDropout (for CPU training); default: when `base` is on the CPU."""
    from peft import get_peft_model

    try:
        model = get_peft_model(base, lora_config(adapter, base))
    except ValueError as exc:
        raise ConfigError(f"adapter.target_modules: {exc}") from None
    if fast_dropout is None:
        fast_dropout = next(base.parameters()).device.type == "cpu"
    if fast_dropout:
        use_fast_dropout(model)  # CUDA's fused dropout kernel is already cheap
    return model
