"""The engine loop: admit requests, schedule a step, run the model, append tokens, finish sequences."""

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from loraforge.errors import LoraforgeError
from loraforge.models import load_tokenizer, pick_dtype, resolve_model
from loraforge.serve.engine.config import EngineConfig
from loraforge.serve.engine.detokenizer import Detokenizer
from loraforge.serve.engine.kv_cache import BlockManager, KVCache
from loraforge.serve.engine.llama import Llama
from loraforge.serve.engine.lora_manager import AdapterManager
from loraforge.serve.engine.lora_math import LoRAWeights
from loraforge.serve.engine.model_runner import ModelRunner
from loraforge.serve.engine.scheduler import Scheduler
from loraforge.serve.engine.sequence import FinishReason, SamplingParams, Sequence


class RequestError(LoraforgeError):
    """A request the engine cannot serve as given (too long, bad parameters); `param` names the field."""

    def __init__(self, param: str, message: str, code: str | None = None):
        super().__init__(f"{param}: {message}")
        self.param, self.code = param, code


@dataclass
class StepOutput:
    """What one step did to one sequence: text added and whether it finished."""

    seq: Sequence
    delta: str
    finished: bool


class Engine:
    def __init__(self, config: EngineConfig, on_ready=None):
        self.config = config
        if config.num_threads and config.device == "cpu":
            torch.set_num_threads(config.num_threads)
        resolved = resolve_model(config.model)
        self.model_name = resolved.name
        self.tokenizer = load_tokenizer(resolved)
        self.dtype = pick_dtype(config.precision, config.device)
        self.model = Llama.load(resolved.path, self.dtype, config.device)
        cfg = self.model.cfg
        self.max_model_len = min(config.max_model_len or 8192, cfg.max_position_embeddings)
        self.eos_ids = set(cfg.eos_token_ids) | _generation_eos(resolved.path)
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
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        dims = {
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "q_size": cfg.num_heads * cfg.head_dim,
            "kv_size": cfg.num_kv_heads * cfg.head_dim,
        }
        self.lora = LoRAWeights(
            dims,
            cfg.num_layers,
            config.max_adapters + 1,
            self.dtype,
            config.device,
            config.lora_cache_bytes(),
        )
        self.adapters = AdapterManager(
            self.lora, dims, config.adapter_dir, config.max_adapters, config.max_adapter_bytes, on_ready
        )
        self.runner = ModelRunner(self.model, self.kv, self.lora, config.device)
        self.detok = Detokenizer(self.tokenizer)
        self.pending: list[Sequence] = []  # waiting for their adapter to load

    # ---- requests ----------------------------------------------------------------------------------
    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise RequestError for a request that can never run."""
        if not prompt_ids:
            raise RequestError("prompt", "must not be empty")
        if len(prompt_ids) >= self.max_model_len:
            raise RequestError(
                "prompt",
                f"{len(prompt_ids)} tokens leave no room in the model's {self.max_model_len}-token context",
                "context_length_exceeded",
            )
        if params.max_tokens < 1:
            raise RequestError("max_tokens", "must be at least 1")
        if params.top_p <= 0 or params.top_p > 1:
            raise RequestError("top_p", "must be in (0, 1]")
        if params.temperature < 0:
            raise RequestError("temperature", "must be >= 0")
        if self.blocks.blocks_needed(len(prompt_ids) + 1) > self.blocks.num_blocks:
            raise RequestError("prompt", "longer than the whole KV cache", "context_length_exceeded")

    def add_request(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        adapter: str | None = None,
        request_id: str | None = None,
    ) -> Sequence:
        self.validate(prompt_ids, params)
        # Never generate past the context or past what the cache can hold for one sequence alone.
        room = min(self.max_model_len, self.blocks.num_blocks * self.blocks.block_size) - len(prompt_ids)
        params.max_tokens = min(params.max_tokens, room)
        adapter = None if adapter in (None, "", self.model_name) else adapter
        seq = Sequence(prompt_ids, params, adapter, request_id)
        if adapter is None:
            self.scheduler.add(seq)
            return seq
        self.adapters.locate(adapter)  # raises ModelNotFoundError for unknown or escaping names
        slot = self.adapters.acquire(adapter)
        seq.holds_adapter = True
        if slot is None:
            self.pending.append(seq)
        else:
            seq.lora_slot = slot
            self.scheduler.add(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        if seq.is_finished:
            return
        if seq in self.pending:
            self.pending.remove(seq)
        self.scheduler.finish(seq)
        self._finish(seq, FinishReason.ABORT)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.pending)

    # ---- the loop ----------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        outputs = self._admit_loaded()
        if not self.scheduler.has_work():
            return outputs
        seqs, is_prefill = self.scheduler.schedule()
        if not seqs:
            return outputs
        tokens = self.runner.run(seqs, is_prefill)
        for seq, token in zip(seqs, tokens, strict=True):
            seq.output_ids.append(token)
            delta = self.detok.step(seq)
            reason = self._check_stop(seq, token, delta)
            if reason is not None:
                self.scheduler.finish(seq)
                self._finish(seq, reason)
            outputs.append(StepOutput(seq, delta, seq.is_finished))
        return outputs

    def _admit_loaded(self) -> list[StepOutput]:
        if not self.pending:
            return []
        installed, failed = self.adapters.poll()
        outputs = []
        for seq in list(self.pending):
            if seq.adapter in installed or seq.adapter in self.adapters.resident:
                self.pending.remove(seq)
                seq.lora_slot = self.adapters.resident[seq.adapter][0]
                self.scheduler.add(seq)
            elif seq.adapter in failed:
                self.pending.remove(seq)
                seq.error = failed[seq.adapter]
                self._finish(seq, FinishReason.ABORT)
                outputs.append(StepOutput(seq, "", True))
        return outputs

    def _check_stop(self, seq: Sequence, token: int, delta: str) -> FinishReason | None:
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


def _generation_eos(path) -> set[int]:
    f = path / "generation_config.json"
    if not f.is_file():
        return set()
    eos = json.loads(f.read_text()).get("eos_token_id")
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
