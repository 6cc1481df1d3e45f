"""Turn a scheduled batch into flat tensors (ids, positions, cache slots, adapter groups), run, sample."""

import torch

from loraforge.serve.engine.attention import AttentionMetadata
from loraforge.serve.engine.kv_cache import KVCache
from loraforge.serve.engine.llama import Llama
from loraforge.serve.engine.lora_math import LoRABatch, LoRAWeights
from loraforge.serve.engine.sampler import sample
from loraforge.serve.engine.sequence import Sequence


class ModelRunner:
    def __init__(self, model: Llama, kv: KVCache, lora: LoRAWeights, device: str = "cpu"):
        self.model, self.kv, self.lora, self.device = model, kv, lora, device
        self.block_size = kv.block_size
        self.kernels = model.kernels  # the model's, which match the cache's device and dtype

    def _slot(self, seq: Sequence, pos: int) -> int:
        return seq.blocks[pos // self.block_size] * self.block_size + pos % self.block_size

    def prepare_prefill(
        self, seqs: list[Sequence]
    ) -> tuple[list[int], list[int], list[int], AttentionMetadata]:
        ids, positions, slots, row_slots, last, lengths = [], [], [], [], [], []
        for seq in seqs:
            n = len(seq)
            ids += seq.token_ids
            positions += range(n)
            slots += [self._slot(seq, p) for p in range(n)]
            row_slots += [seq.lora_slot] * n
            last.append(len(ids) - 1)
            lengths.append(n)
        dev = self.device
        meta = AttentionMetadata(
            is_prefill=True,
            slot_mapping=torch.tensor(slots, device=dev),
            last_token_index=torch.tensor(last, device=dev),
        )
        if len(seqs) > 1:
            max_len, starts = max(lengths), [e - n + 1 for e, n in zip(last, lengths, strict=True)]
            pad = torch.tensor(
                [[s + min(j, n - 1) for j in range(max_len)] for s, n in zip(starts, lengths, strict=True)]
            )
            unpad = [b * max_len + j for b, n in enumerate(lengths) for j in range(n)]
            meta.pad_index, meta.unpad_index = pad.to(dev), torch.tensor(unpad, device=dev)
        return ids, positions, row_slots, meta

    def prepare_decode(
        self, seqs: list[Sequence]
    ) -> tuple[list[int], list[int], list[int], AttentionMetadata]:
        ids = [s.last_token for s in seqs]
        positions = [len(s) - 1 for s in seqs]
        slots = [self._slot(s, len(s) - 1) for s in seqs]
        max_blocks = max(len(s.blocks) for s in seqs)
        tables = torch.tensor(
            [s.blocks + [0] * (max_blocks - len(s.blocks)) for s in seqs], device=self.device
        )
        meta = AttentionMetadata(
            is_prefill=False,
            slot_mapping=torch.tensor(slots, device=self.device),
            last_token_index=torch.arange(len(seqs), device=self.device),
            block_tables=tables,
            context_lens=torch.tensor([len(s) for s in seqs], device=self.device),
            kernels=self.kernels,
        )
        if len(seqs) == 1:
            meta.context_len = len(seqs[0])
        elif self.kernels is None:
            span = torch.arange(max_blocks * self.block_size, device=self.device)
            meta.mask = (span[None, :] < meta.context_lens[:, None])[:, None, None, :]
        return ids, positions, [s.lora_slot for s in seqs], meta

    def run(self, seqs: list[Sequence], is_prefill: bool) -> list[int]:
        """One forward pass over the batch; returns the next token of each sequence."""
        # Rows sorted by adapter: each adapter's rows are contiguous, usually views for the batched LoRA.
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].lora_slot)
        batch = [seqs[i] for i in order]
        ids, positions, row_slots, meta = (self.prepare_prefill if is_prefill else self.prepare_decode)(batch)
        lora = LoRABatch.build(row_slots, self.device) if any(row_slots) else None
        hidden = self.model(
            torch.tensor(ids, device=self.device),
            torch.tensor(positions, device=self.device),
            meta,
            self.kv,
            lora,
            self.lora,
        )
        logits = self.model.logits(hidden).cpu()  # model dtype: the sampler converts only what it samples
        for seq in batch:
            seq.num_cached = len(seq)
        tokens = sample(logits, batch, self.kernels)
        out = [0] * len(seqs)
        for pos, i in enumerate(order):
            out[i] = tokens[pos]
        return out
