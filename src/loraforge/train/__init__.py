"""LoRA fine-tuning: the training loop, checkpoints, metrics and the run orchestration."""
