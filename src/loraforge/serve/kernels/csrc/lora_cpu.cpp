// Multi-adapter LoRA for decode on CPU. Each group of rows (one adapter) reads its adapter's weights once,
// straight from the stacked slots (no gathered copy), in blocks that keep the partial sums in registers.
// torch.bmm over [adapters, 2 rows, d] blocks spends most of its time on per-block overhead here.
//
// Per module (q_proj, k_proj, ...) of a fused projection:
//   shrink:  h[r, :]              = x[r, :] . A[slot(g), :, :]  A: [slots, R, d_in]   (PEFT's lora_A layout)
//   expand:  out[r, off:off+N]   += h[r, :] @ B[slot(g)]        B: [slots, N / 64, R, 64]
//            (lora_B transposed, in blocks of 64 output columns: one contiguous read per block)
// A slot is one adapter's weights of one layer: contiguous inside, any stride between slots. Slot 0 means
// "this adapter does not target the module": the group is skipped (its weights are never stored).
//
// Rows of a group are contiguous (the model runner sorts its batch by adapter): group g owns rows
// [row_start[g], row_start[g+1]). Accumulation is in fp32 whatever the storage type. Plain loops over
// fixed-size blocks: the compiler vectorizes them for the host CPU (-march=native), no intrinsics.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace {

using loraforge::dot_rows;
using loraforge::kDot;
using loraforge::to_float;
using loraforge::with_count;

constexpr int64_t kRows = 4;     // rows of a group processed together
constexpr int64_t kWidth = 64;   // expand: output block, the block width of B's layout

template <typename X, typename T>
void shrink_impl(const torch::Tensor& x, const torch::Tensor& a, const torch::Tensor& slots,
                 const torch::Tensor& row_start, torch::Tensor& h) {
  const int64_t K = a.size(1), d_in = a.size(2), groups = slots.size(0);
  const X* xp = x.data_ptr<X>();
  const T* ap = a.data_ptr<T>();
  float* hp = h.data_ptr<float>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* rs = row_start.data_ptr<int64_t>();
  const int64_t x_stride = x.stride(0), a_slot = a.stride(0), first = rs[0];
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> xf(kRows * d_in);
    for (int64_t g = g0; g < g1; ++g) {
      if (sp[g] == 0) continue;  // no weights for this module: h stays unread
      const T* w = ap + sp[g] * a_slot;
      for (int64_t r0 = rs[g]; r0 < rs[g + 1]; r0 += kRows) {
        const int64_t rows = std::min(kRows, rs[g + 1] - r0);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t k = 0; k < d_in; ++k) xf[r * d_in + k] = to_float(xp[(r0 + r) * x_stride + k]);
        float* hr = hp + (r0 - first) * K;
        with_count(rows, [&](auto n) { dot_rows<decltype(n)::value>(xf.data(), w, K, d_in, hr, K); });
      }
    }
  });
}

// out[r, off:off+N] += h[r, :R] @ B for ROWS rows of one group, one 64-column block of B at a time.
template <int ROWS, typename T, typename O>
void expand_rows(const float* hr, int64_t h_stride, const T* w, int64_t R, int64_t N, O* o, int64_t o_stride) {
  for (int64_t n0 = 0; n0 < N; n0 += kWidth) {
    const int64_t width = std::min(kWidth, N - n0);
    const T* block = w + (n0 / kWidth) * R * kWidth;  // [R, 64], contiguous
    float acc[ROWS][kWidth] = {};
    for (int64_t k = 0; k < R; ++k) {
      const T* wk = block + k * kWidth;
      float wv[kWidth];
      for (int64_t t = 0; t < kWidth; ++t) wv[t] = to_float(wk[t]);  // padding columns are zero
      for (int r = 0; r < ROWS; ++r) {
        const float s = hr[r * h_stride + k];
        for (int64_t t = 0; t < kWidth; ++t) acc[r][t] += s * wv[t];
      }
    }
    for (int r = 0; r < ROWS; ++r) {
      O* out = o + r * o_stride + n0;
      for (int64_t t = 0; t < width; ++t) out[t] = static_cast<O>(to_float(out[t]) + acc[r][t]);
    }
  }
}

template <typename O, typename T>
void expand_impl(const torch::Tensor& h, int64_t col, const torch::Tensor& b, int64_t N,
                 const torch::Tensor& slots, const torch::Tensor& row_start, torch::Tensor& out, int64_t offset) {
  const int64_t R = b.size(2), groups = slots.size(0), K = h.size(1);
  const float* hp = h.data_ptr<float>();
  const T* bp = b.data_ptr<T>();
  O* op = out.data_ptr<O>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* rs = row_start.data_ptr<int64_t>();
  const int64_t o_stride = out.stride(0), b_slot = b.stride(0), first = rs[0];
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      if (sp[g] == 0) continue;
      const T* w = bp + sp[g] * b_slot;
      for (int64_t r0 = rs[g]; r0 < rs[g + 1]; r0 += kRows) {
        const int64_t rows = std::min(kRows, rs[g + 1] - r0);
        const float* hr = hp + (r0 - first) * K + col;
        O* o = op + r0 * o_stride + offset;
        with_count(rows, [&](auto n) { expand_rows<decltype(n)::value>(hr, K, w, R, N, o, o_stride); });
      }
    }
  });
}

// f(X*, W*) with null pointers of the activations' and the weights' types (bf16 or fp32 each: adapters may be
// held in bf16 under fp32 activations, on CPUs without bf16 arithmetic).
template <typename F>
void with_types(const torch::Tensor& x, const torch::Tensor& w, F&& f) {
  const bool xb = x.scalar_type() == torch::kBFloat16, wb = w.scalar_type() == torch::kBFloat16;
  using B = c10::BFloat16;
  if (xb && wb) f(static_cast<B*>(nullptr), static_cast<B*>(nullptr));
  else if (xb) f(static_cast<B*>(nullptr), static_cast<float*>(nullptr));
  else if (wb) f(static_cast<float*>(nullptr), static_cast<B*>(nullptr));
  else f(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
}

void check(const torch::Tensor& x, const torch::Tensor& w, int64_t w_dim, const torch::Tensor& slots,
           const torch::Tensor& row_start) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "lora_cpu: CPU tensors only");
  for (const auto& t : {x, w})
    TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16, "lora_cpu: bf16 or fp32 only");
  TORCH_CHECK(w.dim() == w_dim && w[0].is_contiguous(), "lora_cpu: weights must be ", w_dim,
              "-d, each slot contiguous");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "lora_cpu: activations must be [rows, d] with unit stride");
  TORCH_CHECK(slots.scalar_type() == torch::kLong && row_start.scalar_type() == torch::kLong,
              "lora_cpu: slots and row_start must be int64");
  TORCH_CHECK(row_start.size(0) == slots.size(0) + 1, "lora_cpu: row_start needs one entry per group + 1");
}

torch::Tensor shrink(torch::Tensor x, torch::Tensor a, torch::Tensor slots, torch::Tensor row_start) {
  check(x, a, 3, slots, row_start);
  TORCH_CHECK(x.size(1) == a.size(2), "lora_cpu: x and A disagree on d_in");
  const auto rs = row_start.accessor<int64_t, 1>();
  auto h = torch::empty({rs[slots.size(0)] - rs[0], a.size(1)}, x.options().dtype(torch::kFloat));
  with_types(x, a, [&](auto* xt, auto* at) {
    shrink_impl<std::remove_pointer_t<decltype(xt)>, std::remove_pointer_t<decltype(at)>>(x, a, slots, row_start, h);
  });
  return h;
}

void expand_add(torch::Tensor h, int64_t col, torch::Tensor b, int64_t N, torch::Tensor slots,
                torch::Tensor row_start, torch::Tensor out, int64_t offset) {
  check(out, b, 4, slots, row_start);
  TORCH_CHECK(h.scalar_type() == torch::kFloat && h.is_contiguous(), "lora_cpu: h must be contiguous fp32");
  TORCH_CHECK(b.size(3) == kWidth && b.size(1) * kWidth >= N, "lora_cpu: B must be [slots, N / 64, R, 64]");
  TORCH_CHECK(offset + N <= out.size(1) && col + b.size(2) <= h.size(1), "lora_cpu: out of range");
  with_types(out, b, [&](auto* ot, auto* bt) {
    using O = std::remove_pointer_t<decltype(ot)>;
    expand_impl<O, std::remove_pointer_t<decltype(bt)>>(h, col, b, N, slots, row_start, out, offset);
  });
}

}  // namespace

// One fused projection of one layer: for each module j, shrink with A_j and expand into module j's slice of
// `out` (q/k/v, gate/up), in one call to save the Python round trips of separate ones. A module no adapter of
// the batch targets comes with empty slots and is skipped.
void lora_add(torch::Tensor x, std::vector<torch::Tensor> as, std::vector<torch::Tensor> bs,
              std::vector<int64_t> widths, std::vector<torch::Tensor> slots, torch::Tensor row_start,
              torch::Tensor out) {
  TORCH_CHECK(as.size() == bs.size() && bs.size() == widths.size() && widths.size() == slots.size(),
              "lora_cpu: one A, B, width and slots per module");
  int64_t offset = 0;
  for (size_t j = 0; j < bs.size(); ++j) {
    if (slots[j].numel() > 0) {
      torch::Tensor h = shrink(x, as[j], slots[j], row_start);
      expand_add(h, 0, bs[j], widths[j], slots[j], row_start, out, offset);
    }
    offset += widths[j];
  }
}
