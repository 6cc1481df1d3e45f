// The model's small per-token operations, one pass each instead of the 3-8 PyTorch ops (and temporaries)
// they take written out: at decode batch sizes those ops cost more in dispatch than in arithmetic. Each
// rounds where transformers' Llama rounds, so bf16 results match its eager code.
//
//   rms_norm:  weight * to_dtype(x * rsqrt(mean(x^2) + eps)), statistics in fp32
//   add_rms_norm: x += delta (in place: the residual stream), then rms_norm(x)
//   silu_mul:  to_dtype(silu(gate)) * up, for gate_up = [gate | up] (the fused gate-up projection)
//   rope_qk:   q, k of a fused [q | k | v] projection rotated (rotate-half RoPE): x * cos + rotate_half(x) * sin
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace {

using loraforge::kLanes;
using loraforge::to_float;

// fp32 -> storage type, rounding like torch's .to(dtype) (nearest even for bf16).
template <typename T>
inline float round_to(float v) {
  return to_float(static_cast<T>(v));
}

// RMSNorm of each row of x into out. With `delta`, first x += delta in place, rounded to T as torch's add
// rounds: the residual add of the layer fused in, so the row is read once for both.
template <typename T>
void rms_norm_impl(torch::Tensor& x, const T* delta, int64_t delta_stride, const torch::Tensor& weight, double eps,
                   torch::Tensor& out) {
  const int64_t rows = x.size(0), H = x.size(1);
  T* xp = x.data_ptr<T>();
  const T* wp = weight.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* xr = xp + r * x.stride(0);
      if (delta != nullptr) {
        const T* dr = delta + r * delta_stride;
        for (int64_t i = 0; i < H; ++i) xr[i] = static_cast<T>(to_float(xr[i]) + to_float(dr[i]));
      }
      float part[kLanes] = {};
      const int64_t body = H - H % kLanes;
      for (int64_t i = 0; i < body; i += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) part[l] += to_float(xr[i + l]) * to_float(xr[i + l]);
      float sum = 0.0f;
      for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
      for (int64_t i = body; i < H; ++i) sum += to_float(xr[i]) * to_float(xr[i]);
      const float inv = 1.0f / std::sqrt(sum / static_cast<float>(H) + static_cast<float>(eps));
      T* o = op + r * H;
      for (int64_t i = 0; i < H; ++i)
        o[i] = static_cast<T>(to_float(wp[i]) * round_to<T>(to_float(xr[i]) * inv));
    }
  });
}

template <typename T>
void silu_mul_impl(const torch::Tensor& gate_up, torch::Tensor& out) {
  const int64_t rows = gate_up.size(0), N = gate_up.size(1) / 2;
  const T* gp = gate_up.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, rows, 4, [&](int64_t r0, int64_t r1) {
    std::vector<float> e(N);
    for (int64_t r = r0; r < r1; ++r) {
      const T* g = gp + r * gate_up.stride(0);
      const T* u = g + N;
      // exp(-g) with the same vectorizable form as attention's, valid for every finite input once clamped.
      for (int64_t i = 0; i < N; ++i) e[i] = std::min(std::max(-to_float(g[i]), -87.0f), 88.0f);
      loraforge::exp_in_place(e.data(), N);
      T* o = op + r * N;
      for (int64_t i = 0; i < N; ++i) {
        const float gi = to_float(g[i]);
        o[i] = static_cast<T>(round_to<T>(gi / (1.0f + e[i])) * to_float(u[i]));
      }
    }
  });
}

// Rotate-half RoPE of `heads` heads of D values from `in` (row stride in_stride) into contiguous `out`.
template <typename T>
void rope_heads(const T* in, int64_t in_stride, int64_t rows, int64_t heads, int64_t D, const T* cos,
                const T* sin, T* out) {
  const int64_t half = D / 2;
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* c = cos + r * D;
      const T* s = sin + r * D;
      for (int64_t h = 0; h < heads; ++h) {
        const T* x = in + r * in_stride + h * D;
        T* o = out + (r * heads + h) * D;
        for (int64_t i = 0; i < D; ++i) {
          const float rotated = i < half ? -to_float(x[i + half]) : to_float(x[i - half]);
          o[i] = static_cast<T>(round_to<T>(to_float(x[i]) * to_float(c[i])) + round_to<T>(rotated * to_float(s[i])));
        }
      }
    }
  });
}

void check_rows(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.stride(1) == 1, name, ": x must be a CPU [rows, d] with unit stride");
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kFloat, name, ": bf16 or fp32 only");
}

void check_norm_weight(const torch::Tensor& x, const torch::Tensor& weight, const char* name) {
  TORCH_CHECK(weight.dim() == 1 && weight.is_contiguous() && weight.size(0) == x.size(1) &&
                  weight.scalar_type() == x.scalar_type(),
              name, ": weight must be a contiguous [d] of x's dtype");
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  check_rows(x, "rms_norm");
  check_norm_weight(x, weight, "rms_norm");
  auto out = torch::empty({x.size(0), x.size(1)}, x.options());
  if (x.scalar_type() == torch::kBFloat16) rms_norm_impl<c10::BFloat16>(x, nullptr, 0, weight, eps, out);
  else rms_norm_impl<float>(x, nullptr, 0, weight, eps, out);
  return out;
}

torch::Tensor add_rms_norm(torch::Tensor x, torch::Tensor delta, torch::Tensor weight, double eps) {
  check_rows(x, "add_rms_norm");
  check_rows(delta, "add_rms_norm");
  check_norm_weight(x, weight, "add_rms_norm");
  TORCH_CHECK(delta.sizes() == x.sizes() && delta.scalar_type() == x.scalar_type(),
              "add_rms_norm: delta must be like x");
  auto out = torch::empty({x.size(0), x.size(1)}, x.options());
  if (x.scalar_type() == torch::kBFloat16) {
    rms_norm_impl<c10::BFloat16>(x, delta.data_ptr<c10::BFloat16>(), delta.stride(0), weight, eps, out);
  } else {
    rms_norm_impl<float>(x, delta.data_ptr<float>(), delta.stride(0), weight, eps, out);
  }
  return out;
}

torch::Tensor silu_mul(torch::Tensor gate_up) {
  check_rows(gate_up, "silu_mul");
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "silu_mul: gate_up must be [rows, 2 * d]");
  auto out = torch::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
  if (gate_up.scalar_type() == torch::kBFloat16) silu_mul_impl<c10::BFloat16>(gate_up, out);
  else silu_mul_impl<float>(gate_up, out);
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> rope_qk(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin,
                                                int64_t heads, int64_t kv_heads) {
  check_rows(qkv, "rope_qk");
  const int64_t rows = qkv.size(0), D = cos.size(1);
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 2 && cos.size(0) == rows && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.scalar_type() == qkv.scalar_type() &&
                  sin.scalar_type() == qkv.scalar_type() && D % 2 == 0,
              "rope_qk: cos and sin must be contiguous [rows, head_dim] of qkv's dtype");
  TORCH_CHECK(qkv.size(1) >= (heads + kv_heads) * D, "rope_qk: qkv is narrower than its q and k heads");
  auto q = torch::empty({rows, heads, D}, qkv.options());
  auto k = torch::empty({rows, kv_heads, D}, qkv.options());
  if (qkv.scalar_type() == torch::kBFloat16) {
    using T = c10::BFloat16;
    const T* in = qkv.data_ptr<T>();
    rope_heads<T>(in, qkv.stride(0), rows, heads, D, cos.data_ptr<T>(), sin.data_ptr<T>(), q.data_ptr<T>());
    rope_heads<T>(in + heads * D, qkv.stride(0), rows, kv_heads, D, cos.data_ptr<T>(), sin.data_ptr<T>(),
                  k.data_ptr<T>());
  } else {
    const float* in = qkv.data_ptr<float>();
    rope_heads<float>(in, qkv.stride(0), rows, heads, D, cos.data_ptr<float>(), sin.data_ptr<float>(),
                      q.data_ptr<float>());
    rope_heads<float>(in + heads * D, qkv.stride(0), rows, kv_heads, D, cos.data_ptr<float>(),
                      sin.data_ptr<float>(), k.data_ptr<float>());
  }
  return {q, k};
}
