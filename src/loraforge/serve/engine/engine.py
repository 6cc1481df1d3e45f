"""The engine loop: admit requests, schedule a step, run the model, append tokens, finish sequences."""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from loraforge.models import load_tokenizer, pick_dtype, resolve_model
from loraforge.models.loading import generation_eos_ids
from loraforge.serve.engine.block_manager import BlockManager
from loraforge.serve.engine.config import EngineConfig
from loraforge.serve.engine.detokenizer import Detokenizer, take_new_text
from loraforge.serve.engine.model_runner import ModelRunner
from loraforge.serve.engine.scheduler import Scheduler
from loraforge.serve.engine.sequence import FinishReason, SamplingParams, Sequence
from loraforge.serve.engine.validation import RequestError, validate_request  # noqa: F401 - re-exported
from loraforge.serve.lora.adapter_file import read_adapter
from loraforge.serve.lora.manager import AdapterManager, AdapterRef
from loraforge.serve.lora.weights import LoRAWeights
from loraforge.serve.model.config import ModelConfig
from loraforge.serve.model.kv_cache import KVCache
from loraforge.serve.model.llama import Llama
from loraforge.serve.model.logprobs import TokenLogprob
from loraforge.serve.model.quant import adapter_dtype, resolve_weights

log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """What one step did to one sequence: the new text that is final (see `take_new_text`: a possible start
    of a stop string is held back until it is known not to be one) and whether it finished."""

    seq: Sequence
    delta: str
    finished: bool


class Engine:
    """The serving engine, synchronous and single-threaded: requests in (`add_request`), one `step()` at a
    time, `StepOutput`s out. It owns the model, the paged KV cache, the scheduler, the stacked LoRA weights
    and the adapter manager. `AsyncEngine` runs it on a thread of its own for the server; `generate` runs
    requests to completion for offline use (evaluation, tests, benchmarks). Both see the same text: the
    completion cut at a stop string, streamed in the same deltas."""

    def __init__(self, config: EngineConfig, on_ready=None):
        self.config = config
        if config.num_threads and config.device == "cpu":
            torch.set_num_threads(config.num_threads)
        resolved = resolve_model(config.model)
        self.model_name = resolved.name
        self.tokenizer = load_tokenizer(resolved)
        self.dtype = pick_dtype(config.precision, config.device)  # the activations'; the weights' next
        weights = resolve_weights(config.weights, self.dtype, config.device, config.precision)
        deltas = None
        if config.merged_adapter is not None:
            cfg = ModelConfig.from_hf(resolved.path)
            path = config.merged_adapter
            merged = read_adapter(path.name, path, cfg.dims, cfg.num_layers, torch.float32)
            deltas = merged.deltas()
        self.model = Llama.load(resolved.path, self.dtype, config.device, weights, deltas)
        cfg = self.model.cfg
        self.max_model_len = min(config.max_model_len or 8192, cfg.max_position_embeddings)
        self.vocab_size = cfg.vocab_size
        lim = config.limits
        self.max_prompt_tokens = min(lim.max_prompt_tokens or self.max_model_len, self.max_model_len - 1)
        self.max_tokens_limit = min(lim.max_tokens or self.max_model_len, self.max_model_len)
        self.eos_ids = set(cfg.eos_token_ids) | generation_eos_ids(resolved.path)
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)

        per_block = KVCache.bytes_per_block(
            cfg.num_layers, config.block_size, cfg.num_kv_heads, cfg.head_dim, self.dtype
        )
        # No more blocks than a full batch of full-length sequences could ever use.
        useful = config.max_num_seqs * -(-self.max_model_len // config.block_size)
        num_blocks = config.num_kv_blocks or max(1, min(config.kv_cache_bytes // per_block, useful))
        self.kv = KVCache(
            cfg.num_layers,
            num_blocks,
            config.block_size,
            cfg.num_kv_heads,
            cfg.head_dim,
            self.dtype,
            config.device,
        )
        dims = cfg.dims
        self.lora = LoRAWeights(
            dims,
            cfg.num_layers,
            config.max_adapters + 1,
            adapter_dtype(weights, self.dtype, self.model.ops.lora_in_place),
            config.device,
            config.lora_cache_bytes(),
            self.model.ops,
        )
        self.adapters = AdapterManager(
            self.lora,
            dims,
            config.adapter_dir,
            config.max_adapters,
            config.max_adapter_bytes,
            on_ready,
            config.limits,
        )
        key = lambda seq: self.lora.cache_key(seq.adapter_index)  # noqa: E731
        self.blocks = BlockManager(num_blocks, config.block_size, config.prefix_cache, key)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        self.runner = ModelRunner(self.model, self.kv, self.lora, config.device)
        self.detok = Detokenizer(self.tokenizer)

    @property
    def pending(self) -> list[Sequence]:
        """Requests waiting for their adapter (held by the adapter manager)."""
        return self.adapters.pending

    def resolve(self, model: str | None) -> AdapterRef | None:
        """The adapter a request's `model` names, checked once (None for the base model); raises
        ModelNotFoundError for an unknown or escaping name. Touches the file system: off the event loop."""
        if model in (None, "", self.model_name):
            return None
        return self.adapters.resolve(model)

    # ---- requests ----------------------------------------------------------------------------------
    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise RequestError for a request that can never run (or would fail inside a step)."""
        validate_request(self, prompt_ids, params)

    def add_request(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        adapter: str | AdapterRef | None = None,
        request_id: str | None = None,
    ) -> Sequence:
        """Queue a request; `adapter` is a name (checked here) or what `resolve` returned for it."""
        params.stop = [s for s in params.stop if s]  # an empty stop string would end every request at once
        self.validate(prompt_ids, params)
        # Never generate past the context or past what the cache can hold for one sequence alone.
        room = min(self.max_model_len, self.blocks.num_blocks * self.blocks.block_size) - len(prompt_ids)
        params.max_tokens = min(params.max_tokens, room)
        ref = adapter if isinstance(adapter, AdapterRef) else self.resolve(adapter)
        seq = Sequence(prompt_ids, params, ref.name if ref else None, request_id)
        if ref is None:
            self.scheduler.add(seq)
            return seq
        index = self.adapters.acquire(ref.name)
        seq.holds_adapter = True
        if index is None:
            self.adapters.park(seq)
        else:
            seq.adapter_index = index
            self.scheduler.add(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        if seq.is_finished:
            return
        self.adapters.unpark(seq)
        self.scheduler.finish(seq)
        self._finish(seq, FinishReason.ABORT)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.pending)

    # ---- the loop ----------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Run one step. A failure of one sequence (in the model, sampling or detokenizing) finishes that
        sequence with its error; the others of the batch go on."""
        outputs = self._admit_loaded()
        if not self.scheduler.has_work():
            return outputs
        seqs, is_prefill = self.scheduler.schedule()
        if not seqs:
            return outputs
        try:
            tokens: list[int | None] = list(self.runner.run(seqs, is_prefill))
        except Exception as exc:
            if len(seqs) == 1:
                log.exception("sequence %s failed", seqs[0].request_id)
                return [*outputs, self.fail(seqs[0], exc)]
            log.exception("a step of %d sequences failed; running them one by one", len(seqs))
            tokens = [self._run_alone(seq, is_prefill, outputs) for seq in seqs]
        for seq, token in zip(seqs, tokens, strict=True):
            if token is None:
                continue
            try:
                seq.output_ids.append(token)
                reason = self._check_stop(seq, token, self.detok.step(seq))
                if reason is None and seq.constraint_state is not None:
                    reason = self._take_decided(seq)
            except Exception as exc:
                log.exception("sequence %s failed", seq.request_id)
                outputs.append(self.fail(seq, exc))
                continue
            if reason is not None:
                self.scheduler.finish(seq)
                self._finish(seq, reason)
            outputs.append(StepOutput(seq, take_new_text(seq), seq.is_finished))
        return outputs

    def _run_alone(self, seq: Sequence, is_prefill: bool, outputs: list[StepOutput]) -> int | None:
        """Run one sequence of a failed batch by itself (its KV writes are simply redone); on failure,
        fail it and return None. Nothing is cached before the model returns, so a retry is exact."""
        try:
            return self.runner.run([seq], is_prefill)[0]
        except Exception as exc:
            log.exception("sequence %s failed", seq.request_id)
            outputs.append(self.fail(seq, exc))
            return None

    def fail(self, seq: Sequence, exc: Exception) -> StepOutput:
        """Finish `seq` with an error (it reaches the client); frees its blocks and adapter reference."""
        if seq.is_finished:
            return StepOutput(seq, "", True)
        seq.error = exc
        self.adapters.unpark(seq)
        self.scheduler.finish(seq)
        self._finish(seq, FinishReason.ABORT)
        return StepOutput(seq, take_new_text(seq), True)

    def _admit_loaded(self) -> list[StepOutput]:
        """Schedule the waiting requests whose adapter is now resident; fail those whose load failed."""
        admitted, failed = self.adapters.admit()
        for seq in admitted:
            self.scheduler.add(seq)
        return [self.fail(seq, err) for seq, err in failed]

    def _check_stop(self, seq: Sequence, token: int, delta: str) -> FinishReason | None:
        """Why `seq` ends after `token` (whose text was `delta`), if it does; a stop string found in the
        text cuts `output_text` before it. The one place stop strings are handled."""
        p = seq.params
        for stop in p.stop if delta else ():
            # Only a match that ends inside the new text is new: earlier text was checked before.
            start = max(0, len(seq.output_text) - len(delta) - len(stop) + 1)
            at = seq.output_text.find(stop, start)
            if at >= 0:
                seq.output_text = seq.output_text[:at]
                return FinishReason.STOP
        if token in self.eos_ids and not p.ignore_eos:
            return FinishReason.STOP
        if len(seq.output_ids) >= p.max_tokens or len(seq) >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _take_decided(self, seq: Sequence) -> FinishReason | None:
        """Append the rest of a constrained output once only one way to finish is left (a label named by its
        first tokens): each of those tokens would be chosen with probability 1 whatever the sampling
        settings, so a model step apiece buys nothing (`benchmarks/eval_throughput.py`). Not for rows that
        ignore EOS or want top logprobs (their alternatives would have to be listed)."""
        p = seq.params
        if p.ignore_eos or p.logprobs:
            return None
        tail = seq.constraint_state.decided(seq.output_ids)
        if not tail or tail[-1] not in self.eos_ids:  # only a tail that ends the sequence: no step follows
            return None
        for token in tail:
            seq.output_ids.append(token)
            if p.logprobs == 0:
                seq.logprobs.append(TokenLogprob(token, 0.0))
            reason = self._check_stop(seq, token, self.detok.step(seq))
            if reason is not None:
                return reason
        return None

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        seq.finish(reason)
        if seq.holds_adapter:
            seq.holds_adapter = False
            self.adapters.release(seq.adapter)

    # ---- offline use -------------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        adapters: list[str | None] | None = None,
        on_finish: Callable[[Sequence], None] | None = None,
    ) -> list[Sequence]:
        """Run requests to completion (evaluation, tests, benchmarks); returns the finished sequences in
        order. `on_finish` sees each sequence as it finishes (progress bars)."""
        params_list = (
            params if isinstance(params, list) else [SamplingParams(**vars(params)) for _ in prompts]
        )
        adapters = adapters or [None] * len(prompts)
        seqs = [self.add_request(p, sp, a) for p, sp, a in zip(prompts, params_list, adapters, strict=True)]
        while self.has_work():
            if not self.scheduler.has_work():
                self.adapters.wait_for_load()
            for out in self.step():
                if out.finished and on_finish is not None:
                    on_finish(out.seq)
        return seqs
