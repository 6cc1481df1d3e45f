"""Head-to-head comparison of a candidate (an adapter) against a baseline (the general model) on a task:
on a dataset's test split or on logged shadow pairs, with metrics by task kind and 95% bootstrap intervals,
a pairwise LLM judge for free text, latency and cost, and a gate expression for automatic promotion."""
