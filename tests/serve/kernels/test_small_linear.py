"""The CPU matrix-vector kernel for decode batches of 1-4 rows equals torch's linear."""

import pytest
import torch
import torch.nn.functional as F


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_small_linear_equals_torch(kernels, dtype, rows):
    g = torch.Generator().manual_seed(rows)
    # d_in 100: three 32-wide blocks and a tail of 4; 200 outputs: more than one parallel task of 64 rows.
    x = torch.randn(rows, 100, generator=g)
    w = torch.randn(200, 100, generator=g)
    expected = F.linear(x.double(), w.double())
    got = kernels.small_linear(x.to(dtype), w.to(dtype))
    assert got.dtype == dtype and got.shape == (rows, 200)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


def test_small_linear_reads_strided_rows(kernels):
    x = torch.randn(3, 64)[::2]  # rows 0 and 2: row stride 128, unit stride within a row
    w = torch.randn(10, 64)
    torch.testing.assert_close(kernels.small_linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_small_linear_rejects_five_rows(kernels):
    with pytest.raises(RuntimeError, match=r"\[1..4, K\]"):
        kernels.small_linear(torch.zeros(5, 8), torch.zeros(3, 8))
