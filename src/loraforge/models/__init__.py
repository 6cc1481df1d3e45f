"""Base models: resolve a name (alias, hub id, local dir, .gguf) to an HF-format directory, and load it."""

from loraforge.models.loading import load_causal_lm, load_tokenizer, pick_dtype
from loraforge.models.resolver import ResolvedModel, resolve_model

__all__ = ["ResolvedModel", "load_causal_lm", "load_tokenizer", "pick_dtype", "resolve_model"]
