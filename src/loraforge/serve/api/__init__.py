"""OpenAI-compatible HTTP server (FastAPI) over the multi-LoRA engine."""

from loraforge.serve.api.app import create_app

__all__ = ["create_app"]
