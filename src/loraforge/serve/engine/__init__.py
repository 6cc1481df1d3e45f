"""A small multi-LoRA inference engine: paged KV cache, continuous batching, batched heterogeneous LoRA."""

from loraforge.serve.engine.config import EngineConfig
from loraforge.serve.engine.engine import Engine, RequestError, StepOutput
from loraforge.serve.engine.sequence import FinishReason, SamplingParams, Sequence

__all__ = [
    "Engine",
    "EngineConfig",
    "FinishReason",
    "RequestError",
    "SamplingParams",
    "Sequence",
    "StepOutput",
]
