"""Multi-LoRA: adapter files and hub downloads, the adapter manager (registry, loads, LRU residency), the
stacked weights of the resident adapters, and the per-batch grouping of rows by adapter."""
