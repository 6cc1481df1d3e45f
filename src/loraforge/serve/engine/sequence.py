"""A request as the engine sees it: token ids, sampling settings, KV blocks and state."""

import enum
import itertools
from dataclasses import dataclass, field

import torch

from loraforge.serve.engine.constraints import Constraint, ConstraintState
from loraforge.serve.model.logprobs import TokenLogprob


@dataclass
class SamplingParams:
    """Per-request decoding settings; `temperature == 0` means greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    constraint: Constraint | None = None  # what may be generated: labels, a JSON schema (constraints.py)
    # ---- OpenAI's penalties, bias and log-probabilities (model/penalties.py, model/logprobs.py) ------
    presence_penalty: float = 0.0  # subtracted once from the logit of every token already generated
    frequency_penalty: float = 0.0  # subtracted per time a token was already generated
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    logprobs: int | None = None  # None: none; k: the chosen token's log-probability and the k most likely
    prompt_logprobs: bool = False  # also each prompt token's (echo); needs `logprobs`
    # Keep the final hidden state the first output token is predicted from (`Sequence.answer_state`): what
    # a classifier's label index compares (classify/label_index.py).
    answer_state: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def processed(self) -> bool:
        """Whether the logits need the processors of model/penalties.py."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS or a stop string
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"


_ids = itertools.count()


class Sequence:
    """One generation: prompt + completion tokens; `blocks` lists its KV-cache block ids in order."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        adapter: str | None = None,
        request_id: str | None = None,
    ):
        self.seq_id = next(_ids)
        self.request_id = request_id or f"seq-{self.seq_id}"
        self.prompt_ids = list(prompt_ids)
        self.output_ids: list[int] = []
        self.params = params
        self.adapter = adapter
        self.adapter_index = 0  # its adapter's place in the LoRA stacks; 0 = base model only
        self.holds_adapter = False  # holds a reference that keeps its adapter from being evicted
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.blocks: list[int] = []
        self.num_cached = 0  # tokens whose K/V are in the cache (at admission: from the prefix cache)
        self.num_registered = 0  # leading full blocks registered in the prefix cache (block_manager.py)
        self.block_hashes: list[bytes] = []  # chain hashes of its full blocks, computed as needed
        self.output_text = ""  # detokenized completion, cut at a stop string
        self.text_sent = 0  # characters of output_text handed out (detokenizer.take_new_text)
        self.detok_offsets = (0, 0)  # see Detokenizer
        self.error: Exception | None = None  # why an aborted sequence failed (its adapter did not load)
        self.num_preemptions = 0
        self.generator: torch.Generator | None = None
        # This sequence's own place in its constraint (a grammar matcher); the constraint may be shared.
        self.constraint_state: ConstraintState | None = (
            params.constraint.start() if params.constraint else None
        )
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        # An entry per output token (`logprobs`), and per prompt token after the first (`prompt_logprobs`).
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: list[TokenLogprob] | None = None
        self.answer_state: torch.Tensor | None = None  # `[hidden]` fp32 on the CPU, with params.answer_state
        self.logprobs_sent = 0  # entries of `logprobs` handed out (AsyncEngine's events)
        # Set once, read by the sampler every step: off, the row stays on its plain path (sampler._extras).
        self.sampling_extras = params.processed or params.logprobs is not None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def finish(self, reason: FinishReason) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
