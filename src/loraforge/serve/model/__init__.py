"""The model side of the engine: the Llama family in plain PyTorch, attention over the paged KV cache,
linear layers, and the sampler."""
