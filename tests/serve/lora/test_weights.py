"""Batched LoRA equals a per-row reference: base rows, different adapters and ranks, fused projections."""

import pytest
import torch

from loraforge.serve.kernels.ops import KernelOps
from loraforge.serve.lora.batch import LoRABatch
from loraforge.serve.lora.weights import LoRAWeights
from loraforge.serve.model.projections import PROJECTIONS

# intermediate 84 = one full 64-column block of B plus a partial one
DIMS = {"hidden_size": 12, "q_size": 12, "kv_size": 4, "intermediate_size": 84}
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _random_adapter(rank: int, seed: int, modules=ALL):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(2):
        for din, subs in ((p.in_dim, p.parts) for p in PROJECTIONS.values()):
            for module, dout in subs:
                if module in modules:
                    a = torch.randn(rank, DIMS[din], generator=g, dtype=torch.float64)  # PEFT layouts
                    b = torch.randn(DIMS[dout], rank, generator=g, dtype=torch.float64)
                    out[(layer, module)] = (a, b, 0.5 + seed)
    return out


def _weights(cache_bytes: int):
    w = LoRAWeights(
        DIMS, num_layers=2, capacity=5, dtype=torch.float64, device="cpu", cache_bytes=cache_bytes
    )
    adapters = {
        1: _random_adapter(2, 1, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj")),
        2: _random_adapter(8, 2),
        3: _random_adapter(4, 3, ("v_proj", "up_proj")),
    }
    for index, ad in adapters.items():  # rank grows 2 -> 8 after index 1 is installed: it must survive
        w.ensure_rank(max(a.shape[0] for a, _, _ in ad.values()), sorted(i for i in adapters if i < index))
        if index == 1:
            _poison(w)
        w.install(index, ad)
    return w, adapters


def _poison(w: LoRAWeights) -> None:
    """NaN in every entry before installing: an entry of a module an adapter does not target is never written,
    so reading one (instead of skipping it) turns the output into NaN."""
    for m in w.A:
        w.A[m].fill_(float("nan"))
        w.B[m].fill_(float("nan"))


def _check(w, adapters, row_adapters):
    batch = LoRABatch.build(row_adapters)
    g = torch.Generator().manual_seed(0)
    for proj, din, subs in ((k, p.in_dim, p.parts) for k, p in PROJECTIONS.items()):
        x = torch.randn(len(row_adapters), DIMS[din], generator=g, dtype=torch.float64)
        width = sum(DIMS[d] for _, d in subs)
        base = torch.randn(len(row_adapters), width, generator=g, dtype=torch.float64)
        out = base.clone()
        w.add(1, proj, x, out, batch)
        expected = base.clone()
        for row, index in enumerate(row_adapters):
            offset = 0
            for module, dout in subs:
                if index and (1, module) in adapters[index]:
                    a, b, scale = adapters[index][(1, module)]
                    expected[row, offset : offset + DIMS[dout]] += scale * (x[row] @ a.T @ b.T)
                offset += DIMS[dout]
        torch.testing.assert_close(out, expected)
        for row, index in enumerate(row_adapters):
            if index == 0:
                assert torch.equal(out[row], base[row])  # base rows untouched
    return batch


@pytest.mark.parametrize("cache_bytes", [0, 1 << 30])
def test_grouped_bmm_equals_per_row_reference(cache_bytes):
    w, adapters = _weights(cache_bytes)
    batch = _check(w, adapters, [0, 2, 1, 1, 3, 0, 2, 2, 3])  # unsorted, uneven: gather/scatter path
    assert batch.num_active == 3 and batch.start < 0
    batch = _check(w, adapters, [0, 0, 1, 1, 2, 2, 3, 3])  # sorted, two rows each: views, no gather
    assert batch.start == 2 and batch.rows_per_adapter == 2 and batch.gather_index is None
    batch = _check(w, adapters, [0, 1, 2, 2, 2, 3, 3])  # sorted, uneven (a prefill): gathered back out
    assert batch.start == 1 and batch.unpad_index is not None and batch.scatter_index is None
    assert (w._cache is not None) == bool(cache_bytes)


def test_cached_copy_is_refreshed_when_an_adapter_is_replaced():
    w, adapters = _weights(1 << 30)
    _check(w, adapters, [1, 2, 3])
    adapters[2] = _random_adapter(8, 42)
    w.install(2, adapters[2])
    _check(w, adapters, [1, 2, 3])


def test_a_projection_no_adapter_of_the_batch_targets_is_skipped(monkeypatch):
    w, adapters = _weights(0)
    assert w.targeted(LoRABatch.build([0, 3, 3])) == {"qkv", "gate_up"}  # v_proj, up_proj
    assert w.targeted(LoRABatch.build([1, 3])) == {"qkv", "o", "gate_up", "down"}
    _check(w, adapters, [0, 3, 3])  # o and down untouched, the others equal to the reference
    _check(w, adapters, [0, 1, 3])  # a mixed batch still adds adapter 1's o_proj and down_proj
    called = []
    monkeypatch.setattr(w, "_gathered", lambda batch: called.append(batch) or None)
    out = torch.zeros(2, DIMS["hidden_size"], dtype=torch.float64)
    w.add(
        0, "down", torch.ones(2, DIMS["intermediate_size"], dtype=torch.float64), out, LoRABatch.build([3, 3])
    )
    assert not called and not out.any()  # skipped before any work


@pytest.mark.parametrize(("dtype", "rank"), [(torch.float32, 8), (torch.bfloat16, 8), (torch.bfloat16, 5)])
def test_cpu_kernels_equal_the_batched_matmuls(kernels, dtype, rank):
    """bf16 takes vdpbf16ps where the CPU has it, two rank rows at a time: an odd rank pairs its last with
    zeros."""
    with_kernels = LoRAWeights(DIMS, num_layers=2, capacity=5, dtype=dtype, device="cpu", cache_bytes=0)
    assert isinstance(with_kernels.ops, KernelOps) and with_kernels.ops.kernels is kernels
    reference = LoRAWeights(DIMS, num_layers=2, capacity=5, dtype=torch.float64, device="cpu")
    adapters = {1: _random_adapter(2, 1, ("q_proj", "v_proj", "down_proj")), 2: _random_adapter(rank, 2)}
    adapters[3] = _random_adapter(4, 3, ("v_proj", "up_proj"))
    for w in (with_kernels, reference):
        w.ensure_rank(rank, [])
        _poison(w)
        for index, ad in adapters.items():
            w.install(index, ad)
    g = torch.Generator().manual_seed(0)
    # Decode (one row each), uneven groups of up to five rows (more than one block of 4), base rows first.
    for row_adapters in ([1, 2, 3], [0, 1, 2, 2, 3, 3, 3, 3, 3], [0, 0, 2]):
        batch = LoRABatch.build(row_adapters)
        assert batch.row_start is not None
        for proj, din, subs in ((k, p.in_dim, p.parts) for k, p in PROJECTIONS.items()):
            x = torch.randn(len(row_adapters), DIMS[din], generator=g, dtype=torch.float64)
            base = torch.randn(
                len(row_adapters), sum(DIMS[d] for _, d in subs), generator=g, dtype=torch.float64
            )
            expected = base.clone()
            reference.add(1, proj, x, expected, batch)
            out = base.to(dtype)
            with_kernels.add(1, proj, x.to(dtype), out, batch)
            tol = 1e-4 if dtype == torch.float32 else 0.05
            torch.testing.assert_close(
                out.double(), expected, rtol=tol, atol=tol * expected.abs().max().item()
            )


def test_an_adapter_occupies_only_the_modules_it_targets():
    """PEFT's default q_proj/v_proj adapter: it has no entries in the stacks of the five other modules
    (nothing of theirs is written for it), and it is counted at its own bytes when its rank is the common
    rank."""
    dims = {"hidden_size": 64, "q_size": 64, "kv_size": 128, "intermediate_size": 192}  # whole 64-col blocks
    w = LoRAWeights(dims, num_layers=2, capacity=3, dtype=torch.float32, device="cpu")
    w.ensure_rank(8, [])
    _poison(w)
    g = torch.Generator().manual_seed(0)
    adapter = {}
    for layer in range(2):
        adapter[(layer, "q_proj")] = (torch.randn(8, 64, generator=g), torch.randn(64, 8, generator=g), 1.0)
        adapter[(layer, "v_proj")] = (torch.randn(8, 64, generator=g), torch.randn(128, 8, generator=g), 1.0)
    w.install(1, adapter)
    assert w.entries[1] == {"q_proj": 1, "v_proj": 1}
    for m in w.A:  # entry 1 written only in the stacks of q and v
        assert w.A[m][1].isnan().all() != (m in ("q_proj", "v_proj")), m
        assert w.B[m][1].isnan().all() != (m in ("q_proj", "v_proj")), m
    own = sum(a.numel() + b.numel() for a, b, _ in adapter.values()) * 4
    assert w.adapter_bytes_at(8, frozenset({"q_proj", "v_proj"})) == own
    assert w.adapter_bytes_at(8) > 3 * own  # all seven modules: what every adapter cost before


def test_each_stack_packs_the_entries_of_the_adapters_that_target_its_module():
    """Entries are given out lowest first per module, and an adapter installed in place of another frees the
    entries of the modules it does not target: whatever the mix, each stack's used entries are 1..n."""
    w = LoRAWeights(DIMS, num_layers=2, capacity=5, dtype=torch.float64, device="cpu")
    w.ensure_rank(2, [])
    w.install(1, _random_adapter(2, 1, ("q_proj", "v_proj")))
    w.install(2, _random_adapter(2, 2))
    w.install(3, _random_adapter(2, 3, ("v_proj", "up_proj")))
    assert w.entries[1] == {"q_proj": 1, "v_proj": 1}
    assert w.entries[2] == {m: 2 if m in ("q_proj", "v_proj") else 1 for m in ALL}
    assert w.entries[3] == {"v_proj": 3, "up_proj": 2}
    w.install(1, _random_adapter(2, 4, ("up_proj",)))  # replaces index 1's adapter
    assert w.entries[1] == {"up_proj": 3}
    w.install(4, _random_adapter(2, 5, ("q_proj", "k_proj")))
    assert w.entries[4] == {"q_proj": 1, "k_proj": 2}
    w.ensure_rank(4, [2, 4])  # index 1 and 3 are not live: their entries go with them
    assert sorted(w.entries) == [2, 4]
    _check(w, {2: _random_adapter(2, 2), 4: _random_adapter(2, 5, ("q_proj", "k_proj"))}, [2, 4, 4])


def test_the_entries_the_next_install_writes_are_backed_ahead_of_it(monkeypatch):
    """After an install, the next free entry of each module it targets is handed to `populate` in the
    background, and the next adapter with those targets is installed exactly there."""
    from loraforge.serve.lora import weights as weights_module

    backed = []
    # The backer is one worker shared by every LoRAWeights: let earlier tests' jobs finish first, or on a
    # loaded machine they would run under the patch and record their own entries.
    weights_module._backer().submit(lambda: None).result()
    monkeypatch.setattr(weights_module, "populate", lambda t: backed.append(t.data_ptr()))
    w = LoRAWeights(DIMS, num_layers=2, capacity=5, dtype=torch.float64, device="cpu")
    w.ensure_rank(2, [])
    w.install(1, _random_adapter(2, 1, ("q_proj", "v_proj")))
    weights_module._backer().submit(lambda: None).result()  # one worker, in order: the backing is done
    expected = {stack[m][2].data_ptr() for m in ("q_proj", "v_proj") for stack in (w.A, w.B)}
    assert set(backed) == expected and len(backed) == 4
    w.install(2, _random_adapter(2, 2, ("q_proj", "v_proj")))
    assert w.entries[2] == {"q_proj": 2, "v_proj": 2}
