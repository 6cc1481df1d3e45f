"""Turn a scheduled batch into flat tensors (ids, positions, KV-cache slots, adapter groups), run, sample."""

import torch

from loraforge.serve.engine.sequence import Sequence
from loraforge.serve.lora.batch import LoRABatch
from loraforge.serve.lora.weights import NO_LORA, LoRAStep, LoRAWeights
from loraforge.serve.model.attention import AttentionMetadata
from loraforge.serve.model.kv_cache import KVCache
from loraforge.serve.model.llama import Llama
from loraforge.serve.model.logprobs import prompt_entries
from loraforge.serve.model.sampler import sample

PROMPT_LOGITS_CHUNK = 256  # prompt positions whose logits (`echo` + `logprobs`) are computed at once


class ModelRunner:
    """Runs one scheduled step on the model: lays the batch out as flat tensors (token ids, positions, the
    KV-cache slot of each new token, the adapter index of each row), calls the model and samples one token
    per sequence. Rows are sorted by adapter first, so each adapter's rows are contiguous for the LoRA."""

    def __init__(self, model: Llama, kv: KVCache, lora: LoRAWeights, device: str = "cpu"):
        self.model, self.kv, self.lora, self.device = model, kv, lora, device
        self.block_size = kv.block_size
        self.ops = model.ops  # the model's, which match the cache's device and dtype

    def _slot(self, seq: Sequence, pos: int) -> int:
        return seq.blocks[pos // self.block_size] * self.block_size + pos % self.block_size

    def prepare_prefill(
        self, seqs: list[Sequence]
    ) -> tuple[list[int], list[int], list[int], AttentionMetadata]:
        """The uncached tokens of each sequence (from `num_cached` on: a prefix-cache hit skips its start)."""
        ids, positions, slots, row_adapters, last, lengths = [], [], [], [], [], []
        for seq in seqs:
            start, n = seq.num_cached, len(seq)
            ids += seq.token_ids[start:]
            positions += range(start, n)
            slots += [self._slot(seq, p) for p in range(start, n)]
            row_adapters += [seq.adapter_index] * (n - start)
            last.append(len(ids) - 1)
            lengths.append(n - start)
        dev = self.device
        meta = AttentionMetadata(
            is_prefill=True,
            slot_mapping=torch.tensor(slots, device=dev),
            last_token_index=torch.tensor(last, device=dev),
        )
        cached = any(seq.num_cached for seq in seqs)
        # Every prompt from the cache: a long uncached prompt beside them would make a row per token over its
        # whole length, where one causal SDPA does better.
        if self.ops.paged_prefill and all(seq.num_cached for seq in seqs):
            self._paged_queries(seqs, lengths, meta)
            return ids, positions, row_adapters, meta
        if len(seqs) > 1:
            max_len, starts = max(lengths), [e - n + 1 for e, n in zip(last, lengths, strict=True)]
            pad = torch.tensor(
                [[s + min(j, n - 1) for j in range(max_len)] for s, n in zip(starts, lengths, strict=True)]
            )
            unpad = [b * max_len + j for b, n in enumerate(lengths) for j in range(n)]
            meta.pad_index, meta.unpad_index = pad.to(dev), torch.tensor(unpad, device=dev)
        if cached:
            self._cached_context(seqs, lengths, meta)
        return ids, positions, row_adapters, meta

    @staticmethod
    def _block_tables(seqs: list[Sequence]) -> torch.Tensor:
        """`[sequences, max_blocks]` (CPU): each sequence's cache blocks in order, padded with block 0."""
        max_blocks = max(len(s.blocks) for s in seqs)
        return torch.tensor([s.blocks + [0] * (max_blocks - len(s.blocks)) for s in seqs])

    def _paged_queries(self, seqs: list[Sequence], lengths: list[int], meta: AttentionMetadata) -> None:
        """A prefill over cached prefixes as decode attention (`ops.paged_prefill`): each new token is a
        query with its sequence's block table, seeing the cache (prefix + the new K/V, written first) up to
        and including itself."""
        tables = self._block_tables(seqs)
        rows = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor(lengths))
        meta.block_tables = tables[rows].to(self.device)
        meta.context_lens = torch.tensor(
            [s.num_cached + j + 1 for s, n in zip(seqs, lengths, strict=True) for j in range(n)],
            device=self.device,
        )

    def _cached_context(self, seqs: list[Sequence], lengths: list[int], meta: AttentionMetadata) -> None:
        """A prefill over cached prefixes attends to the cache (prefix + its own new K/V, written first):
        block tables, and a mask where query j of a sequence with `c` cached tokens sees keys 0..c+j (padded
        query rows repeat the last real one)."""
        meta.block_tables = self._block_tables(seqs).to(self.device)
        max_blocks = meta.block_tables.shape[1]
        cached = torch.tensor([s.num_cached for s in seqs])
        q = torch.minimum(torch.arange(max(lengths))[None, :], torch.tensor(lengths)[:, None] - 1)
        keys = torch.arange(max_blocks * self.block_size)
        meta.mask = (keys[None, None, :] <= (cached[:, None] + q)[:, :, None]).unsqueeze(1).to(self.device)

    def prepare_decode(
        self, seqs: list[Sequence]
    ) -> tuple[list[int], list[int], list[int], AttentionMetadata]:
        ids = [s.last_token for s in seqs]
        positions = [len(s) - 1 for s in seqs]
        slots = [self._slot(s, len(s) - 1) for s in seqs]
        tables = self._block_tables(seqs).to(self.device)
        max_blocks = tables.shape[1]
        meta = AttentionMetadata(
            is_prefill=False,
            slot_mapping=torch.tensor(slots, device=self.device),
            last_token_index=torch.arange(len(seqs), device=self.device),
            block_tables=tables,
            context_lens=torch.tensor([len(s) for s in seqs], device=self.device),
        )
        if len(seqs) == 1:
            meta.context_len = len(seqs[0])
        else:
            meta.mask = self.ops.decode_mask(meta.context_lens, max_blocks * self.block_size)
        return ids, positions, [s.adapter_index for s in seqs], meta

    def run(self, seqs: list[Sequence], is_prefill: bool) -> list[int]:
        """One forward pass over the batch; returns the next token of each sequence."""
        # Rows sorted by adapter: each adapter's rows are contiguous, usually views for the batched LoRA.
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].adapter_index)
        batch = [seqs[i] for i in order]
        ids, positions, row_adapters, meta = (self.prepare_prefill if is_prefill else self.prepare_decode)(
            batch
        )
        scored = is_prefill and any(s.params.prompt_logprobs and s.prompt_logprobs is None for s in batch)
        if scored:  # the hidden states of every prompt position of those sequences, not just the last
            last = self._with_prompt_rows(batch, meta.last_token_index.tolist())
            meta.last_token_index = torch.tensor(last, device=self.device)
        lora = NO_LORA
        if any(row_adapters):
            lora = LoRAStep(self.lora, LoRABatch.build(row_adapters, self.device))
        hidden = self.model(
            torch.tensor(ids, device=self.device),
            torch.tensor(positions, device=self.device),
            meta,
            self.kv,
            lora,
        )
        if scored:
            hidden = self._take_prompt_logprobs(batch, hidden)
        if is_prefill:
            self._keep_answer_states(batch, hidden)
        logits = self.model.logits(hidden).cpu()  # model dtype: the sampler converts only what it samples
        for seq in batch:
            seq.num_cached = len(seq)
        tokens = sample(logits, batch, self.ops)
        out = [0] * len(seqs)
        for pos, i in enumerate(order):
            out[i] = tokens[pos]
        return out

    @staticmethod
    def _keep_answer_states(batch: list[Sequence], hidden: torch.Tensor) -> None:
        """The state at the prompt's last token, for a sequence that asked for it. Only at its first prefill:
        a preempted sequence prefills again with its output, whose last token is no longer the prompt's."""
        rows = [
            row
            for row, seq in enumerate(batch)
            if seq.params.answer_state and seq.answer_state is None and not seq.output_ids
        ]
        if rows:  # one gather and one copy to the CPU for all of them, not a view of the whole batch each
            for row, state in zip(rows, hidden[rows].float().cpu(), strict=True):
                batch[row].answer_state = state

    @staticmethod
    def _with_prompt_rows(batch: list[Sequence], last: list[int]) -> list[int]:
        """The rows to compute logits for: each sequence's last token, preceded by the prompt positions
        0..len(prompt)-2 of a sequence that wants its prompt logprobs (`echo` with `logprobs`)."""
        rows = []
        for seq, end in zip(batch, last, strict=True):
            if seq.params.prompt_logprobs and seq.prompt_logprobs is None:
                start = end - len(seq) + 1
                rows += range(start, start + len(seq.prompt_ids) - 1)
            rows.append(end)
        return rows

    def _take_prompt_logprobs(self, batch: list[Sequence], hidden: torch.Tensor) -> torch.Tensor:
        """Store the prompt logprobs of the rows `_with_prompt_rows` added, their logits computed a chunk at
        a time (a long prompt's `[tokens, vocab]` at once could take gigabytes); returns the other rows."""
        keep, row = [], 0
        for seq in batch:
            if seq.params.prompt_logprobs and seq.prompt_logprobs is None:
                n, k, found = len(seq.prompt_ids) - 1, seq.params.logprobs or 0, []
                for at in range(0, n, PROMPT_LOGITS_CHUNK):
                    end = min(at + PROMPT_LOGITS_CHUNK, n)
                    logits = self.model.logits(hidden[row + at : row + end]).cpu()
                    found += prompt_entries(logits, seq.prompt_ids[at + 1 : end + 1], k)
                seq.prompt_logprobs = found
                row += n
            keep.append(row)
            row += 1
        return hidden[keep]
