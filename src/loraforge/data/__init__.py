"""Training data: reading files, rendering prompts, tokenizing with loss masks, and batching."""
