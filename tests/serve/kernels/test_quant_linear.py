"""The reduced-weight linear kernel (csrc/quant_linear_cpu.cpp) equals the reference, dequantize then matmul,
for bf16, int8 and int4 weights, fp32 and bf16 activations, odd sizes and batches past the 4-row blocks; in
the host's build and in the AVX2 build (`-march=haswell`, what an AVX2-only CPU compiles), which runs here
by forcing it."""

import pytest
import torch
import torch.nn.functional as F

from loraforge.serve.kernels.ops import TORCH_OPS
from loraforge.serve.model.quant import dequantize, quantize


@pytest.fixture(params=["native", "avx2"])
def build(request, kernels):
    return kernels if request.param == "native" else request.getfixturevalue("avx2_kernels")


# (format, out features, in features, group): odd output counts (a partial parallel task of 64 rows, a
# partial 4-row block), a d_in tail past the 32-wide blocks for the plain formats, int4 groups of 32 and 64.
SHAPES = [
    ("bf16", 67, 100, 0),
    ("int8", 67, 100, 0),
    ("int8", 200, 7, 0),
    ("int4", 67, 96, 32),
    ("int4", 131, 128, 64),
]


def _case(fmt, n, k, group, rows, seed):
    g = torch.Generator().manual_seed(seed)
    qw = quantize(torch.randn(n, k, generator=g) * 0.1, fmt, group or 32)
    return qw, torch.randn(rows, k, generator=g)


@pytest.mark.parametrize(("fmt", "n", "k", "group"), SHAPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quant_linear_equals_dequantize_then_matmul(build, fmt, n, k, group, rows, dtype):
    qw, x = _case(fmt, n, k, group, rows, seed=rows + n)
    x = x.to(dtype)
    expected = F.linear(x.double(), dequantize(qw).double())
    got = build.quant_linear(x, qw.data, qw.scales, qw.group)
    assert got.dtype == dtype and got.shape == (rows, n)
    # fp32: sums in another order than the reference; bf16: the output rounded once (2^-8 relative).
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


@pytest.mark.parametrize(("fmt", "n", "k", "group"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_equals_the_reference(build, fmt, n, k, group, dtype):
    qw, _ = _case(fmt, n, k, group, 1, seed=n)
    expected = dequantize(qw)
    got = build.dequantize(qw.data, qw.scales, qw.group, k, dtype == torch.bfloat16)
    assert got.dtype == dtype and got.shape == (n, k)
    # fp32: int4's scale * q + min may be one fused multiply-add (one rounding fewer); bf16: one rounding.
    tol = 1e-6 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol * expected.abs().max().item())


def test_strided_rows_and_the_torch_reference(kernels):
    qw, x = _case("int8", 40, 64, 0, 6, seed=3)
    strided = x[::2]  # rows 0, 2, 4: a row stride of 128, unit stride within a row
    expected = TORCH_OPS.quant_linear(strided, qw)
    torch.testing.assert_close(kernels.quant_linear(strided, qw.data, qw.scales, 0), expected)


def test_quantization_round_trips_within_half_a_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(33, 128, generator=g)
    w[3] = 0.0  # an all-zero row: a zero scale must not divide by zero
    int8 = quantize(w, "int8")
    step8 = w.abs().amax(1, keepdim=True) / 127
    assert torch.all((dequantize(int8) - w).abs() <= step8 / 2 + 1e-6)
    int4 = quantize(w, "int4", 32)
    wg = w.view(33, 4, 32)
    step4 = ((wg.amax(-1) - wg.amin(-1)) / 15)[..., None]
    # Half a step, plus what rounding the scale and min to bf16 moves the grid (15 steps of 2^-9 relative).
    err = (dequantize(int4).view(33, 4, 32) - wg).abs()
    assert torch.all(err <= step4 * (0.5 + 15 * 2**-8) + wg.abs().amax(-1, keepdim=True) * 2**-8)
    assert int4.nbytes == 33 * 128 // 2 + 33 * 4 * 2 * 2  # 4 bits a weight + a bf16 scale and min a group
    assert torch.equal(dequantize(int8)[3], torch.zeros(128)) and torch.equal(dequantize(int4)[3], w[3])


def test_bad_shapes_are_refused(kernels):
    qw, x = _case("int4", 8, 64, 32, 1, seed=0)
    with pytest.raises(RuntimeError, match="group size"):
        kernels.quant_linear(x, qw.data, qw.scales, 48)
    with pytest.raises(RuntimeError, match="int8 needs fp32 scales"):
        kernels.quant_linear(x, torch.zeros(8, 64, dtype=torch.int8), torch.zeros(3), 0)
    with pytest.raises(ValueError, match="cannot quantize"):
        quantize(torch.zeros(8, 40), "int4", 32)
