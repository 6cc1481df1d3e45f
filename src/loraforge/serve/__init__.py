"""Serving: the multi-LoRA engine (`serve.engine`) and its OpenAI-compatible HTTP API (`serve.api`)."""
