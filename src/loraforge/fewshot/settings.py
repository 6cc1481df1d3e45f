"""The few-shot defaults and limits, in one place (routes, compare and the gateway use them)."""

DEFAULT_K = 8  # examples per prompt: enough to show the label set's neighbours, short enough for small models
MAX_K = 64
# The newest good examples a store index holds: BM25 over this many answers a query in ~0.3 ms, and a task
# with more good examples than this is a task for an adapter, not for few-shot prompting.
MAX_STORE_EXAMPLES = 5000
DEFAULT_REFRESH_S = 10.0  # how often a gateway re-reads a few-shot task's good examples
