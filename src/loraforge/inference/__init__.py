"""Inference with Hugging Face transformers (`loraforge generate`, the `hf` evaluation backend); the serving
engine is `loraforge.serve`."""
