// The base model's linear layers for a decode batch of a few rows: y = x @ W^T, W `[N, K]` (nn.Linear's
// layout) read once, as in a matrix-vector product. At one to four rows torch's bf16 matmul reads the
// weights at about half the memory bandwidth this does, and a decode step of one sequence is nothing but
// reading the weights.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

#include "common.h"

namespace {

using loraforge::dot_rows;
using loraforge::to_float;
using loraforge::with_count;

constexpr int64_t kMaxRows = 4;
constexpr int64_t kGrain = 64;  // rows of W per parallel task: a few KB to 100s of KB of weights each

template <typename T>
void small_linear_impl(const torch::Tensor& x, const torch::Tensor& w, torch::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  std::vector<float> xf(M * K);
  const T* xp = x.data_ptr<T>();
  for (int64_t r = 0; r < M; ++r)
    for (int64_t k = 0; k < K; ++k) xf[r * K + k] = to_float(xp[r * x.stride(0) + k]);
  const T* wp = w.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
    const T* wn = wp + n0 * K;
    T* on = op + n0;
    with_count(M, [&](auto n) { dot_rows<decltype(n)::value>(xf.data(), wn, n1 - n0, K, on, N); });
  });
}

}  // namespace

torch::Tensor small_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "small_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "small_linear: x and w differ in dtype");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.size(0) >= 1 && x.size(0) <= kMaxRows,
              "small_linear: x must be [1..4, K] with unit stride");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(1) == x.size(1), "small_linear: w must be [N, K]");
  auto out = torch::empty({x.size(0), w.size(0)}, x.options());
  if (x.scalar_type() == torch::kBFloat16) small_linear_impl<c10::BFloat16>(x, w, out);
  else if (x.scalar_type() == torch::kFloat) small_linear_impl<float>(x, w, out);
  else TORCH_CHECK(false, "small_linear: bf16 or fp32 only");
  return out;
}
