"""loraforge: fine-tune small LoRA models from a general-model prototype and serve many of them at once."""

__version__ = "0.1.0"
