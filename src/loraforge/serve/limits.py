"""Every limit and policy of `loraforge serve`, with its default, in one place.

The CLI flags (`loraforge serve --help`) and the README take their defaults from here; the API and the
engine read them from `EngineConfig.limits`."""

from dataclasses import dataclass

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # OpenAI's seed is a 64-bit integer
# The resident adapter set (LRU beyond either bound; `--max-adapters`, `--max-adapter-mb`, EngineConfig).
MAX_ADAPTERS = 128
MAX_ADAPTER_BYTES = 8 << 30  # counted at the padded rank
# The base model's linear weights in memory (`--weights`, EngineConfig.weights; serve/model/quant.py says
# what each means): auto holds 16 bits where the CPU kernels run (bf16 weights under fp32 activations).
WEIGHT_FORMATS = ("auto", "fp32", "bf16", "int8", "int4")
DEFAULT_WEIGHTS = "auto"
MAX_LOGPROBS = 20  # most alternatives per position for `top_logprobs` / `logprobs` (OpenAI's: 20 / 5)
MAX_MERGED_ADAPTERS = 8  # most adapters one `merge` combines
MAX_MERGE_WEIGHT = 100.0  # largest |weight| of an adapter in a `merge` (finite, and far from overflowing)
MAX_CHOICES = 16  # most choices per request (`n`); each is a sequence of its own in the batch


@dataclass(frozen=True)
class ServeLimits:
    # ---- requests ----------------------------------------------------------------------------------
    max_body_bytes: int = 4 << 20  # a request body larger than this is refused with 413
    max_prompt_tokens: int | None = None  # None: the model's context length less one
    max_tokens: int | None = None  # bound on max_tokens; None: the model's context length
    max_stop_sequences: int = 16  # number of `stop` strings (OpenAI allows 4)
    max_stop_chars: int = 256  # length of one `stop` string
    # ---- adapters ----------------------------------------------------------------------------------
    max_adapter_rank: int = 256  # an adapter of higher LoRA rank is refused (every adapter pads to the max)
    adapter_failure_ttl_s: float = 30.0  # a failed adapter load is answered from memory this long
    max_remembered_failures: int = 1024  # failed adapter names remembered at most
    # ---- Hugging Face Hub adapters (off unless the operator allows them) ---------------------------
    allow_hub_adapters: bool = False
    hub_max_bytes: int = 1 << 30  # an adapter repository larger than this is not downloaded
    hub_timeout_s: float = 120.0  # wall-clock bound on one adapter download
    hub_max_downloads: int = 2  # downloads at once; more are refused until one ends
    # ---- metrics -----------------------------------------------------------------------------------
    max_metric_models: int = 512  # distinct `model` label values; further names share one label
