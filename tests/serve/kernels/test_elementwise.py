"""The CPU kernels for RMSNorm, SiLU-mul and RoPE equal the model's PyTorch code (which rounds like HF)."""

import pytest
import torch
import torch.nn.functional as F

from loraforge.serve.kernels.ops import apply_rope, rms_norm

# bf16: the kernels round where the PyTorch code rounds, so at most one bf16 step apart (summation order).
TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5])
def test_rms_norm_equals_pytorch(kernels, dtype, rows):
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, 100, generator=g) * 3).to(dtype)  # 100: six 16-wide blocks and a tail
    w = torch.randn(100, generator=g).to(dtype)
    expected = rms_norm(x, w, 1e-5)
    got = kernels.rms_norm(x, w, 1e-5)
    assert got.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_equals_pytorch(kernels, dtype):
    g = torch.Generator().manual_seed(0)
    gate_up = (torch.randn(3, 2 * 70, generator=g) * 4).to(dtype)
    gate_up[0, :4] = torch.tensor([-200.0, -88.0, 88.0, 120.0])  # far tails: exp is clamped there
    gate, up = gate_up.chunk(2, dim=-1)
    expected = F.silu(gate) * up
    got = kernels.silu_mul(gate_up)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)


def test_kernels_reject_odd_widths(kernels):
    with pytest.raises(RuntimeError, match="2 \\* d"):
        kernels.silu_mul(torch.zeros(2, 5))
    with pytest.raises(RuntimeError, match="weight"):
        kernels.rms_norm(torch.zeros(2, 8), torch.zeros(7), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_qk_equals_pytorch(kernels, dtype):
    heads, kv_heads, dim, tokens = 4, 2, 10, 3
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=g).to(dtype)
    angles = torch.rand(tokens, 1, dim // 2, generator=g) * 50
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    q = apply_rope(qkv[:, : heads * dim].reshape(tokens, heads, dim), cos, sin)
    k = apply_rope(qkv[:, heads * dim : (heads + kv_heads) * dim].reshape(tokens, kv_heads, dim), cos, sin)
    got_q, got_k = kernels.rope_qk(qkv, cos.squeeze(1), sin.squeeze(1), heads, kv_heads)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got_q.float(), q.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(got_k.float(), k.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_is_the_residual_add_then_rms_norm(kernels, dtype):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(64, 100, generator=g).to(dtype)  # 100: six 16-wide lanes and a tail of 4
    delta = torch.randn(64, 100, generator=g).to(dtype)
    weight = torch.randn(100, generator=g).to(dtype)
    expected_h = h + delta
    expected = rms_norm(expected_h, weight, 1e-5)
    got = kernels.add_rms_norm(h, delta, weight, 1e-5)
    assert torch.equal(h, expected_h)  # updated in place, rounded like torch's add
    tol = TOLERANCE[dtype]  # the sum of squares is in another order than torch's
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)
