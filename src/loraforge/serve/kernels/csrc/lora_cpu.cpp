// Multi-adapter LoRA for decode on CPU. Each group of rows (one adapter) reads its adapter's weights once,
// straight from the stacked slots (no gathered copy), in blocks that keep the partial sums in registers.
// torch.bmm over [adapters, 2 rows, d] blocks spends most of its time on per-block overhead here.
//
// Per module (q_proj, k_proj, ...) of a fused projection, for the rows r of group g:
//   shrink:  h[r, :]              = x[r, :] . A[slot(g), :, :]  A: [slots, R, d_in]   (PEFT's lora_A layout)
//   expand:  out[r, off:off+N]   += h[r, :] @ B[slot(g)]        B: [slots, N / 64, R, 64]
//            (lora_B transposed, in blocks of 64 output columns: one contiguous read per block)
// A slot is one adapter's weights of one layer: contiguous inside, any stride between slots. Slot 0 means
// "this adapter does not target the module": the group skips it (its weights are never stored). One parallel
// loop over groups per call; a group's rows are widened to fp32 once, and h stays in a small buffer.
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

void check(const torch::Tensor& x, const torch::Tensor& out, const std::vector<torch::Tensor>& as,
           const std::vector<torch::Tensor>& bs, const std::vector<int64_t>& widths,
           const std::vector<torch::Tensor>& slots, const torch::Tensor& row_start) {
  TORCH_CHECK(as.size() == bs.size() && bs.size() == widths.size() && widths.size() == slots.size(),
              "lora_cpu: one A, B, width and slots per module");
  TORCH_CHECK(x.device().is_cpu() && out.device().is_cpu(), "lora_cpu: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == out.scalar_type(), "lora_cpu: x and out must have one dtype");
  for (const auto& t : {x, out}) {
    TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16, "lora_cpu: bf16 or fp32 only");
    TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1, "lora_cpu: activations must be [rows, d] with unit stride");
  }
  TORCH_CHECK(row_start.scalar_type() == torch::kLong && row_start.dim() == 1, "lora_cpu: row_start must be int64");
  int64_t width = 0;
  for (size_t j = 0; j < as.size(); ++j) {
    width += widths[j];
    if (slots[j].numel() == 0) continue;
    const auto &a = as[j], &b = bs[j];
    TORCH_CHECK(a.scalar_type() == as[0].scalar_type() && b.scalar_type() == as[0].scalar_type(),
                "lora_cpu: all weights must have one dtype");
    TORCH_CHECK(a.scalar_type() == torch::kFloat || a.scalar_type() == torch::kBFloat16, "lora_cpu: bf16 or fp32 only");
    // Each slot contiguous (any stride between slots); strides, not a[0].is_contiguous(): no tensor per call.
    const bool a_ok = a.dim() == 3 && a.stride(2) == 1 && a.stride(1) == a.size(2);
    const bool b_ok = b.dim() == 4 && b.stride(3) == 1 && b.stride(2) == b.size(3) && b.stride(1) == b.size(2) * b.size(3);
    TORCH_CHECK(a_ok && b_ok, "lora_cpu: A must be [slots, R, d_in] and B [slots, N / 64, R, 64], each slot contiguous");
    TORCH_CHECK(a.size(2) == x.size(1), "lora_cpu: x and A disagree on d_in");
    TORCH_CHECK(b.size(2) == a.size(1) && b.size(3) == kWidth && b.size(1) * kWidth >= widths[j],
                "lora_cpu: B must be [slots, N / 64, R, 64] with A's R");
    TORCH_CHECK(slots[j].scalar_type() == torch::kLong && slots[j].numel() + 1 == row_start.numel(),
                "lora_cpu: slots must be int64, one per group");
  }
  TORCH_CHECK(width <= out.size(1), "lora_cpu: the modules' widths exceed out");
}

// One module's weights as the kernel reads them.
struct Module {
  const void* a;
  const void* b;
  const int64_t* slots;  // null: no adapter of the batch targets the module
  int64_t a_slot, b_slot, rank, width, offset;
};

// Every group in one pass: its rows are widened to fp32 once, then for each module the shrink lands in a small
// buffer that the expand reads while it is still in cache (no h tensor, one parallel loop per projection).
template <typename X, typename T>
void lora_impl(const torch::Tensor& x, const std::vector<Module>& modules, const torch::Tensor& row_start,
               torch::Tensor& out) {
  const int64_t d_in = x.size(1), groups = row_start.size(0) - 1;
  const X* xp = x.data_ptr<X>();
  X* op = out.data_ptr<X>();
  const int64_t* rs = row_start.data_ptr<int64_t>();
  const int64_t x_stride = x.stride(0), o_stride = out.stride(0);
  int64_t max_rank = 0;
  for (const auto& m : modules) max_rank = std::max(max_rank, m.rank);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> xf(kRows * d_in), h(kRows * max_rank);
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t r0 = rs[g]; r0 < rs[g + 1]; r0 += kRows) {
        const int64_t rows = std::min(kRows, rs[g + 1] - r0);
        bool widened = false;
        for (const auto& m : modules) {
          if (m.slots == nullptr || m.slots[g] == 0) continue;  // slot 0: the adapter skips this module
          if (!widened) {
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t k = 0; k < d_in; ++k) xf[r * d_in + k] = to_float(xp[(r0 + r) * x_stride + k]);
            widened = true;
          }
          const T* a = static_cast<const T*>(m.a) + m.slots[g] * m.a_slot;
          const T* b = static_cast<const T*>(m.b) + m.slots[g] * m.b_slot;
          X* o = op + r0 * o_stride + m.offset;
          with_count(rows, [&](auto n) {
            constexpr int N = decltype(n)::value;
            dot_rows<N>(xf.data(), a, m.rank, d_in, h.data(), m.rank);
            expand_rows<N>(h.data(), m.rank, b, m.rank, m.width, o, o_stride);
          });
        }
      }
    }
  });
}

}  // namespace

// One fused projection of one layer (q/k/v or gate/up, or a single module): for each module j,
// out[:, off_j:off_j+N_j] += (x @ A_j[slot]^T) @ B_j[slot] per row group. A module no adapter of the batch
// targets comes with empty slots and is skipped.
void lora_add(torch::Tensor x, std::vector<torch::Tensor> as, std::vector<torch::Tensor> bs,
              std::vector<int64_t> widths, std::vector<torch::Tensor> slots, torch::Tensor row_start,
              torch::Tensor out) {
  check(x, out, as, bs, widths, slots, row_start);
  std::vector<Module> modules;
  int64_t offset = 0;
  torch::Tensor weights;
  for (size_t j = 0; j < as.size(); ++j) {
    if (slots[j].numel() > 0) {
      modules.push_back({as[j].data_ptr(), bs[j].data_ptr(), slots[j].data_ptr<int64_t>(), as[j].stride(0),
                         bs[j].stride(0), as[j].size(1), widths[j], offset});
      weights = as[j];
    }
    offset += widths[j];
  }
  if (modules.empty()) return;
  with_types(x, weights, [&](auto* xt, auto* wt) {
    lora_impl<std::remove_pointer_t<decltype(xt)>, std::remove_pointer_t<decltype(wt)>>(x, modules, row_start, out);
  });
}
