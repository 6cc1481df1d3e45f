"""Batched greedy generation with HF transformers, for `loraforge generate` and the hf evaluation backend."""

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loraforge.errors import ConfigError, ModelNotFoundError
from loraforge.inference.hf_constraints import prefix_allowed_tokens
from loraforge.models import load_causal_lm, load_tokenizer, pick_dtype, resolve_model
from loraforge.serve.engine.constraints import ChoiceConstraint

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

ADAPTER = "adapter"  # the name of the one adapter a GenerationModel wraps


class GenerationModel:
    """A causal LM (maybe PEFT-wrapped) and its tokenizer, generating greedily in length-sorted batches."""

    def __init__(self, model, tokenizer, device: str = "cpu") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        # generate() passes the LM head only the last position, a strided [batch, 1, hidden] view. On CPU,
        # F.linear on such a view with a frozen weight (any PEFT model) broadcasts the weight to
        # [batch, hidden, vocab] and copies it: 3.6 GB and ~7 s for 64 rows of SmolLM2. Contiguous, it is
        # one matmul (`tests/inference/test_hf.py`).
        head = model.get_output_embeddings()
        if head is not None and not getattr(head, "_loraforge_contiguous_input", False):
            head.register_forward_pre_hook(_contiguous_input)
            head._loraforge_contiguous_input = True  # once, however many GenerationModels wrap the model

    @classmethod
    def load(cls, spec: str, adapter: str | Path | None = None, precision: str = "auto") -> "GenerationModel":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        resolved = resolve_model(spec)
        model = load_causal_lm(resolved, dtype=pick_dtype(precision, device), device=device)
        if adapter is not None:
            model = attach_adapter(model, Path(adapter))
        return cls(model, load_tokenizer(resolved), device)

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def generate_runs(
        self,
        prompts: list[str],
        adapters: list[str | None],
        max_new_tokens: int = 64,
        on_done=None,
        allowed_outputs: list[str] | None = None,
        batch_size: int = 32,
    ) -> dict[str | None, list[str]]:
        """`generate` for each run, one after the other: None is the base model, ADAPTER the wrapped one (the
        interface of `EngineBackend.generate_runs`)."""
        unknown = [a for a in adapters if a is not None and (a != ADAPTER or not self.has_adapter)]
        if unknown:
            raise ConfigError(f"the hf evaluation backend runs one adapter, named {ADAPTER!r}; not {unknown}")
        return {
            adapter: self.generate(
                prompts, max_new_tokens, batch_size, adapter is not None, on_done, allowed_outputs
            )
            for adapter in adapters
        }

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int = 64,
        batch_size: int = 32,
        use_adapter: bool = True,
        on_batch=None,
        allowed_outputs: list[str] | None = None,
    ) -> list[str]:
        """Greedy completions of `prompts` (already templated), in input order, special tokens removed.

        With `allowed_outputs`, decoding is constrained so that every completion is one of those strings.
        """
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        outputs: list[str] = [""] * len(prompts)
        pad_id = self.tokenizer.pad_token_id
        context = self.model.disable_adapter() if self.has_adapter and not use_adapter else nullcontext()
        trie = ChoiceConstraint.from_strings(allowed_outputs, self.tokenizer) if allowed_outputs else None
        self.model.eval()
        with context:
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in indices)
                # Left padding: every row's last prompt token sits in the same column, so generation lines up.
                ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(indices), width), dtype=torch.long)
                for row, i in enumerate(indices):
                    ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                    mask[row, width - len(encoded[i]) :] = 1
                generated = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    prefix_allowed_tokens_fn=prefix_allowed_tokens(trie, width) if trie else None,
                )
                for row, i in enumerate(indices):
                    new_tokens = generated[row, width:]
                    outputs[i] = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
                if on_batch is not None:
                    on_batch(len(indices))
        return outputs


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def attach_adapter(model: "PreTrainedModel", adapter_dir: Path) -> "PeftModel":
    """Wrap `model` with a saved PEFT adapter (safetensors only)."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"'{adapter_dir}' is not a PEFT adapter directory (no adapter_config.json)")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ModelNotFoundError(
            f"'{adapter_dir}' has no adapter_model.safetensors (only safetensors are loaded)"
        )
    return PeftModel.from_pretrained(model, adapter_dir, use_safetensors=True).eval()
