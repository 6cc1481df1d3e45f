"""Load a resolved model and tokenizer with the dtype that is fastest on this hardware."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loraforge.hardware import has_fast_bf16
from loraforge.models.resolver import ResolvedModel

if TYPE_CHECKING:  # transformers is imported when a model is loaded, not with this module
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def pick_dtype(precision: str = "auto", device: str = "cpu") -> torch.dtype:
    """Map a precision setting (`auto|fp32|bf16`) to a torch dtype for `device`."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if has_fast_bf16() else torch.float32


def load_tokenizer(model: ResolvedModel) -> "PreTrainedTokenizerBase":
    """The model's tokenizer, with the end-of-sequence token as padding where it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    model: ResolvedModel, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> "PreTrainedModel":
    """The causal LM in `dtype` on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model.path, dtype=dtype)
    return lm.to(device).eval()


def generation_eos_ids(path: Path) -> set[int]:
    """The end-of-sequence ids a model's `generation_config.json` adds to its config's (none without one)."""
    f = Path(path) / "generation_config.json"
    if not f.is_file():
        return set()
    eos = json.loads(f.read_text()).get("eos_token_id")
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
