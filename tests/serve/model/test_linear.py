"""A base-model linear layer gives torch's `F.linear` result in each of its forms (packed oneDNN, kernel),
also over bf16 weights under fp32 activations (`QuantLinear` with its packed fp32 copy)."""

import os

import pytest
import torch
import torch.nn.functional as F

from loraforge.serve.kernels.ops import QUANT_KERNEL_ROWS, SMALL_BATCH_ROWS, KernelOps
from loraforge.serve.model import linear as linear_mod
from loraforge.serve.model.linear import Linear, QuantLinear, keep_plain_copy, onednn_packs
from loraforge.serve.model.quant import dequantize, quantize

needs_bf16_packing = pytest.mark.skipif(
    not onednn_packs(torch.bfloat16),
    reason="oneDNN packs bf16 weights only on CPUs with AVX-512 BW/VL/DQ or AVX-NE-CONVERT (this one has "
    "neither); test_without_packing_every_form_gives_f_linear covers the fallback these CPUs run",
)


def _inputs(rows: int, dtype: torch.dtype, bias: bool):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 96, generator=g).to(dtype)
    w = torch.randn(200, 96, generator=g).to(dtype)
    b = torch.randn(200, generator=g).to(dtype) if bias else None
    return x, w, b


@needs_bf16_packing
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [3, 17, 64])
def test_packed_bf16_is_bit_identical_to_f_linear(rows, bias):
    x, w, b = _inputs(rows, torch.bfloat16, bias)
    layer = Linear(w, b)
    assert layer.packed is not None
    assert torch.equal(layer(x), F.linear(x, w, b))


@pytest.mark.parametrize("rows", [1, 5, 64])
def test_packed_fp32_matches_f_linear(rows):
    x, w, b = _inputs(rows, torch.float32, True)
    assert onednn_packs(torch.float32)  # fp32 packs on every x86-64 CPU oneDNN runs on
    torch.testing.assert_close(Linear(w, b)(x), F.linear(x, w, b), rtol=1e-5, atol=1e-4)


def test_few_rows_take_the_kernel_and_more_rows_the_packed_weight(kernels, monkeypatch):
    x, w, b = _inputs(64, torch.float32, True)
    calls = []

    class SpyKernels(KernelOps):
        def small_linear(self, x, w):
            calls.append("kernel")
            return super().small_linear(x, w)

    def spy_packed(x, packed, bias):
        calls.append("packed")
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    monkeypatch.setattr(linear_mod, "packed_linear", spy_packed)
    layer = Linear(w, b, SpyKernels(kernels))
    for rows in (1, SMALL_BATCH_ROWS, SMALL_BATCH_ROWS + 1, 64):
        torch.testing.assert_close(layer(x[:rows]), F.linear(x[:rows], w, b), rtol=1e-5, atol=1e-4)
    assert calls == ["kernel", "kernel", "packed", "packed"]


def test_no_packing_where_onednn_does_not_apply():
    x, w, b = _inputs(8, torch.float16, True)
    layer = Linear(w, b)
    assert layer.packed is None
    assert torch.equal(layer(x), F.linear(x, w, b))


@needs_bf16_packing
@pytest.mark.parametrize("rows", [1, 64])
def test_packed_only_drops_the_plain_weight_and_gives_the_same_result(kernels, rows):
    x, w, b = _inputs(rows, torch.bfloat16, True)
    ops = KernelOps(kernels)
    both, packed_only = Linear(w, b, ops), Linear(w, b, ops, keep_plain=False)
    assert packed_only.weight is None and packed_only.nbytes == both.nbytes // 2
    torch.testing.assert_close(packed_only(x), both(x), rtol=1e-2, atol=1e-2)  # 1 row: kernel vs oneDNN


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_without_packing_every_form_gives_f_linear(kernels, monkeypatch, dtype):
    """What a CPU where oneDNN cannot pack runs (bf16 on AVX2-only CPUs): no packed form, the plain weight
    kept even when asked to drop it, the kernel for 1-2 rows and `F.linear` for more."""
    monkeypatch.setattr(linear_mod, "onednn_packs", lambda dtype: False)
    x, w, b = _inputs(64, dtype, True)
    layer = Linear(w, b, KernelOps(kernels), keep_plain=False)
    assert layer.packed is None and layer.weight.data_ptr() == w.data_ptr()
    assert layer.nbytes == w.numel() * w.element_size()
    assert torch.equal(layer(x), F.linear(x, w, b))
    for rows in (1, SMALL_BATCH_ROWS):
        torch.testing.assert_close(layer(x[:rows]), F.linear(x[:rows], w, b), rtol=1e-2, atol=1e-2)


def test_the_packing_probe_matches_what_torch_can_pack():
    w = torch.randn(32, 32).to(torch.bfloat16)
    try:
        torch.ops.mkldnn._reorder_linear_weight(w, 64)
        packs = True
    except RuntimeError as exc:  # AVX2-only CPUs: "bf16 path needs the cpu support ..."
        assert "bf16" in str(exc)
        packs = False
    assert onednn_packs(torch.bfloat16) == packs
    assert (Linear(w).packed is not None) == packs
    assert not onednn_packs(torch.float16)


def test_the_plain_copy_is_kept_for_weights_up_to_a_quarter_of_memory():
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert keep_plain_copy(250 << 20) and keep_plain_copy(total // 4)
    assert not keep_plain_copy(total // 4 + 1)


def test_batches_are_padded_to_few_shapes_and_the_padding_is_cut_off():
    """oneDNN compiles a primitive per shape: every batch size of a server must map onto few of them."""
    shapes = {linear_mod.padded_rows(rows) for rows in range(1, 2049)}
    assert len(shapes) <= 16 + (2048 - 256) // 64
    assert all(linear_mod.padded_rows(r) >= r for r in range(1, 2049))
    x, w, b = _inputs(37, torch.float32, True)
    out = Linear(w, b)(x)
    assert out.shape == (37, 200)
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-4)


def test_bf16_weights_keep_a_packed_fp32_copy_for_larger_batches(kernels, monkeypatch):
    """bf16 weights under fp32 activations (`auto` on AVX2-only CPUs): the kernel reads the bf16 weight for
    a few rows, oneDNN a packed fp32 copy of the same values for more, so every batch size computes with the
    same weights; without the copy more rows widen the weight per call."""
    x, w, b = _inputs(64, torch.float32, True)
    qw = quantize(w, "bf16")
    exact = dequantize(qw)  # the bf16 values, widened
    calls = []

    def spy_packed(x, packed, bias):
        calls.append(x.shape[0])
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    monkeypatch.setattr(linear_mod, "packed_linear", spy_packed)
    ops = KernelOps(kernels)
    layer, unpacked = QuantLinear(qw, b, ops, packed=True), QuantLinear(qw, b, ops)
    assert layer.nbytes == w.numel() * (2 + 4) and unpacked.nbytes == w.numel() * 2
    for rows in (1, QUANT_KERNEL_ROWS, QUANT_KERNEL_ROWS + 1, 64):
        want = F.linear(x[:rows], exact, b)
        torch.testing.assert_close(layer(x[:rows]), want, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(unpacked(x[:rows]), want, rtol=1e-5, atol=1e-4)
    assert calls == [QUANT_KERNEL_ROWS + 1, 64]
    with pytest.raises(ValueError, match="only bf16"):
        QuantLinear(quantize(w, "int8"), b, ops, packed=True)
