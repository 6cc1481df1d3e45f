// The model's small per-token operations, one pass each instead of the 3-8 PyTorch ops (and temporaries)
// they take written out: at decode batch sizes those ops cost more in dispatch than in arithmetic. Each
// rounds where transformers' Llama rounds, so bf16 results match its eager code.
//
//   rms_norm:  weight * to_dtype(x * rsqrt(mean(x^2) + eps)), statistics in fp32
//   silu_mul:  to_dtype(silu(gate)) * up, for gate_up = [gate | up] (the fused gate-up projection)
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace {

using loraforge::to_float;

constexpr int64_t kLanes = 16;

// fp32 -> storage type, rounding like torch's .to(dtype) (nearest even for bf16).
template <typename T>
inline float round_to(float v) {
  return to_float(static_cast<T>(v));
}

template <typename T>
void rms_norm_impl(const torch::Tensor& x, const torch::Tensor& weight, double eps, torch::Tensor& out) {
  const int64_t rows = x.size(0), H = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* wp = weight.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = xp + r * x.stride(0);
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

void check_rows(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.stride(1) == 1, name, ": x must be a CPU [rows, d] with unit stride");
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kFloat, name, ": bf16 or fp32 only");
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  check_rows(x, "rms_norm");
  TORCH_CHECK(weight.dim() == 1 && weight.is_contiguous() && weight.size(0) == x.size(1) &&
                  weight.scalar_type() == x.scalar_type(),
              "rms_norm: weight must be a contiguous [d] of x's dtype");
  auto out = torch::empty({x.size(0), x.size(1)}, x.options());
  if (x.scalar_type() == torch::kBFloat16) rms_norm_impl<c10::BFloat16>(x, weight, eps, out);
  else rms_norm_impl<float>(x, weight, eps, out);
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
