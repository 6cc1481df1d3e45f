// Multi-adapter LoRA for decode on CPU. Each group of rows (one adapter) reads its adapter's weights once,
// straight from the stacked entries (no gathered copy), in blocks that keep the partial sums in registers.
// torch.bmm over [adapters, 2 rows, d] blocks spends most of its time on per-block overhead here.
//
// Per module (q_proj, k_proj, ...) of a fused projection, for the rows r of group g:
//   shrink:  h[r, :]              = x[r, :] . A[entry(g), :, :]  A: [entries, R, d_in]   (PEFT's lora_A layout)
//   expand:  out[r, off:off+N]   += h[r, :] @ B[entry(g)]        B: [entries, N / 64, R, 64]
//            (lora_B transposed, in blocks of 64 output columns: one contiguous read per block)
// An entry is one adapter's weights of one layer: contiguous inside, any stride between entries. Entry 0 means
// "this adapter does not target the module": the group skips it (its weights are never stored). One parallel
// loop over groups per call; a group's rows are widened to fp32 once, and h stays in a small buffer. Each
// thread prefetches the entries it will read next (Prefetch): an entry is a run of 10-50 KiB at a place of its
// own, and the hardware prefetchers, which start over at each run, left a decode step over 32 adapters ~1.3x
// slower than reading the same bytes in one run (serve_throughput.py row 7).
//
// Rows of a group are contiguous (the model runner sorts its batch by adapter): group g owns rows
// [row_start[g], row_start[g+1]). Accumulation is in fp32 whatever the storage type. Plain loops over
// fixed-size blocks: the compiler vectorizes them for the host CPU (-march=native). Except for bf16 on CPUs
// with AVX512-BF16 (Zen 4, Sapphire Rapids): there vdpbf16ps multiplies bf16 pairs as they are stored, where
// the plain loops widen every weight to fp32 first and spent more time on that than memory took to deliver
// the weights (benchmarks/cpu_kernels.py, serve_throughput.py row 7).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.h"

namespace {

using loraforge::dot_rows;
using loraforge::to_float;
using loraforge::with_count;

constexpr int64_t kRows = 4;     // rows of a group processed together
constexpr int64_t kWidth = 64;   // expand: output block, the block width of B's layout
constexpr int64_t kLine = 64;    // bytes per cache line
constexpr int64_t kAhead = 512;  // cache lines prefetched ahead of the reads: 32 KiB (measured 16-64 KiB alike)

// Software prefetch (into L2) of the byte ranges a thread reads, in the order it reads them, kAhead lines
// ahead: the kernels call step(n) as they read n lines.
class Prefetch {
 public:
  void add(const void* p, int64_t bytes) {
    const char* c = static_cast<const char*>(p);
    ranges_.emplace_back(c, c + bytes);
  }
  void start() {
    next_ = ranges_.empty() ? nullptr : ranges_[0].first;
    step(kAhead);
  }
  void step(int64_t lines) {
    for (int64_t n = 0; n < lines && next_ != nullptr; ++n) {
      __builtin_prefetch(next_, 0, 2);  // read, keep in L2 (prefetcht1 on x86)
      next_ += kLine;
      if (next_ >= ranges_[range_].second) next_ = ++range_ < ranges_.size() ? ranges_[range_].first : nullptr;
    }
  }

 private:
  std::vector<std::pair<const char*, const char*>> ranges_;
  size_t range_ = 0;
  const char* next_ = nullptr;
};

// Vectors of a 64-column block each expand pass accumulates per row: ROWS x kCols partial sums take half the
// vector registers (AVX2: 8 of 16; AVX-512: 16 of 32), the rest hold B's widened row and h's broadcasts. A
// whole block's sums (ROWS x 64 floats) do not fit AVX2's registers: GCC kept them on the stack, and on a Zen 3
// the expand read its weights (in L2) at ~16 GB/s, against ~44 GB/s in passes.
template <int ROWS>
constexpr int64_t kCols = std::min<int64_t>(kWidth / loraforge::kVec, (loraforge::kVec == 16 ? 16 : 8) / ROWS);

// out[r, off:off+N] += h[r, :R] @ B for ROWS rows of one group, one 64-column block of B at a time, in passes of
// kCols vectors (the block stays in L1 between passes). The sums go to `out` as vectors: written from an array
// of them, they too stayed on the stack.
template <int ROWS, typename T, typename O>
void expand_rows(const float* hr, int64_t h_stride, const T* w, int64_t R, int64_t N, O* o, int64_t o_stride,
                 Prefetch& pf) {
  using loraforge::f32xv;
  using loraforge::kVec;
  using loraforge::loadv;
  constexpr int64_t C = kCols<ROWS>, span = C * kVec;
  for (int64_t n0 = 0; n0 < N; n0 += kWidth) {
    const int64_t width = std::min(kWidth, N - n0);
    const T* block = w + (n0 / kWidth) * R * kWidth;  // [R, 64], contiguous
    pf.step(R * kWidth * static_cast<int64_t>(sizeof(T)) / kLine);
    for (int64_t c0 = 0; c0 < width; c0 += span) {
      f32xv acc[ROWS][C];
      for (int r = 0; r < ROWS; ++r)
        for (int64_t c = 0; c < C; ++c) acc[r][c] = f32xv{};
      for (int64_t k = 0; k < R; ++k) {
        const T* wk = block + k * kWidth + c0;  // padding columns are zero
        f32xv wv[C];
        for (int64_t c = 0; c < C; ++c) wv[c] = loadv(wk + c * kVec);
        for (int r = 0; r < ROWS; ++r) {
          const float s = hr[r * h_stride + k];
          for (int64_t c = 0; c < C; ++c) acc[r][c] += s * wv[c];
        }
      }
      const int64_t cols = std::min(span, width - c0);
      for (int r = 0; r < ROWS; ++r) {
        O* out = o + r * o_stride + n0 + c0;
        if (cols == span) {
          for (int64_t c = 0; c < C; ++c) loraforge::storev(out + c * kVec, loadv(out + c * kVec) + acc[r][c]);
          continue;
        }
        float sums[span];  // a block narrower than 64 columns
        for (int64_t c = 0; c < C; ++c) loraforge::storev(sums + c * kVec, acc[r][c]);
        for (int64_t t = 0; t < cols; ++t) out[t] = static_cast<O>(to_float(out[t]) + sums[t]);
      }
    }
  }
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
constexpr bool kBf16Dot = true;
using Bf16 = c10::BFloat16;

inline __mmask32 first_lanes32(int64_t n) { return n >= 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << n) - 1); }
inline __mmask16 first_lanes16(int64_t n) { return n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1); }

// h[r * R + j] = x[r, :] . a[j, :] for ROWS rows of x and NJ rows of A: 32 products per vdpbf16ps (exact
// products of bf16, fp32 sums), NJ * ROWS independent sums in registers, each x block loaded once for NJ.
template <int ROWS, int NJ>
inline void shrink_block_bf16(const Bf16* x, int64_t x_stride, const Bf16* a, int64_t d_in, float* h, int64_t R,
                              Prefetch& pf) {
  __m512 acc[NJ][ROWS];
  for (int j = 0; j < NJ; ++j)
    for (int r = 0; r < ROWS; ++r) acc[j][r] = _mm512_setzero_ps();
  for (int64_t k0 = 0; k0 < d_in; k0 += 32) {
    const __mmask32 mask = first_lanes32(d_in - k0);
    pf.step(NJ);  // a line of each of NJ rows of A
    __m512bh xv[ROWS];
    for (int r = 0; r < ROWS; ++r)
      xv[r] = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(mask, x + r * x_stride + k0));
    for (int j = 0; j < NJ; ++j) {
      const __m512bh w = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(mask, a + j * d_in + k0));
      for (int r = 0; r < ROWS; ++r) acc[j][r] = _mm512_dpbf16_ps(acc[j][r], w, xv[r]);
    }
  }
  for (int j = 0; j < NJ; ++j)
    for (int r = 0; r < ROWS; ++r) h[r * R + j] = _mm512_reduce_add_ps(acc[j][r]);
}

template <int ROWS>
void shrink_bf16(const Bf16* x, int64_t x_stride, const Bf16* a, int64_t R, int64_t d_in, float* h, Prefetch& pf) {
  int64_t j = 0;
  for (; j + 4 <= R; j += 4) shrink_block_bf16<ROWS, 4>(x, x_stride, a + j * d_in, d_in, h + j, R, pf);
  for (; j < R; ++j) shrink_block_bf16<ROWS, 1>(x, x_stride, a + j * d_in, d_in, h + j, R, pf);
}

// out[r, :N] += h[r, :R] @ B for ROWS rows, two rows of B per vdpbf16ps: rows k and k+1 of a 64-column block
// interleaved (vpunpck{l,h}wd) meet (h[r, k], h[r, k+1]) as a bf16 pair (h rounded to bf16, as a bf16 matmul
// rounds its output). The interleave works within 128-bit lanes, so an accumulator holds columns 0-3, 8-11,
// 16-19, 24-27 (low) or 4-7, 12-15, ... (high) of its 32: put back in order once per block. `pairs` is room
// for ROWS * ceil(R / 2) pairs.
template <int ROWS>
void expand_bf16(const float* h, int64_t R, const Bf16* w, int64_t N, Bf16* o, int64_t o_stride, uint32_t* pairs,
                 Prefetch& pf) {
  const int64_t half = (R + 1) / 2;
  for (int r = 0; r < ROWS; ++r)
    for (int64_t k = 0; k < R; k += 2) {
      const uint32_t lo = Bf16(h[r * R + k]).x, hi = k + 1 < R ? Bf16(h[r * R + k + 1]).x : 0;
      pairs[r * half + k / 2] = lo | hi << 16;
    }
  const __m512i in_order[2] = {_mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0),
                               _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8)};
  for (int64_t n0 = 0; n0 < N; n0 += kWidth) {
    const Bf16* block = w + (n0 / kWidth) * R * kWidth;
    __m512 acc[ROWS][4];  // per row: columns 0-31 (low, high), 32-63 (low, high)
    for (int r = 0; r < ROWS; ++r)
      for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_setzero_ps();
    for (int64_t k = 0; k < R; k += 2) {
      const Bf16* row = block + k * kWidth;
      const bool pair = k + 1 < R;  // an odd R pairs its last row with zeros
      pf.step(pair ? 4 : 2);
      const __m512i b0 = _mm512_loadu_si512(row), b1 = _mm512_loadu_si512(row + 32);
      const __m512i c0 = pair ? _mm512_loadu_si512(row + kWidth) : _mm512_setzero_si512();
      const __m512i c1 = pair ? _mm512_loadu_si512(row + kWidth + 32) : _mm512_setzero_si512();
      const __m512bh v[4] = {reinterpret_cast<__m512bh>(_mm512_unpacklo_epi16(b0, c0)),
                             reinterpret_cast<__m512bh>(_mm512_unpackhi_epi16(b0, c0)),
                             reinterpret_cast<__m512bh>(_mm512_unpacklo_epi16(b1, c1)),
                             reinterpret_cast<__m512bh>(_mm512_unpackhi_epi16(b1, c1))};
      for (int r = 0; r < ROWS; ++r) {
        const __m512bh hv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(pairs[r * half + k / 2])));
        for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], v[q], hv);
      }
    }
    const int64_t width = std::min(kWidth, N - n0);  // padding columns are zero, and not written
    for (int r = 0; r < ROWS; ++r) {
      Bf16* out = o + r * o_stride + n0;
      for (int64_t c0 = 0; c0 < width; c0 += 16) {
        const int q = static_cast<int>(c0 / 32);
        const __m512 sum = _mm512_permutex2var_ps(acc[r][2 * q], in_order[(c0 / 16) % 2], acc[r][2 * q + 1]);
        const __mmask16 mask = first_lanes16(width - c0);
        const __m256i old = _mm256_maskz_loadu_epi16(mask, out + c0);
        const __m512 wide = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(old), 16));
        const __m256i rounded = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_add_ps(wide, sum)));
        _mm256_mask_storeu_epi16(out + c0, mask, rounded);
      }
    }
  }
}
#else
constexpr bool kBf16Dot = false;
#endif

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
           const std::vector<torch::Tensor>& entries, const torch::Tensor& row_start) {
  TORCH_CHECK(as.size() == bs.size() && bs.size() == widths.size() && widths.size() == entries.size(),
              "lora_cpu: one A, B, width and entries per module");
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
    if (entries[j].numel() == 0) continue;
    const auto &a = as[j], &b = bs[j];
    TORCH_CHECK(a.scalar_type() == as[0].scalar_type() && b.scalar_type() == as[0].scalar_type(),
                "lora_cpu: all weights must have one dtype");
    TORCH_CHECK(a.scalar_type() == torch::kFloat || a.scalar_type() == torch::kBFloat16, "lora_cpu: bf16 or fp32 only");
    // Each entry contiguous (any stride between entries); strides, not a[0].is_contiguous(): no tensor per call.
    const bool a_ok = a.dim() == 3 && a.stride(2) == 1 && a.stride(1) == a.size(2);
    const bool b_ok = b.dim() == 4 && b.stride(3) == 1 && b.stride(2) == b.size(3) && b.stride(1) == b.size(2) * b.size(3);
    TORCH_CHECK(a_ok && b_ok, "lora_cpu: A must be [entries, R, d_in] and B [entries, N / 64, R, 64], each entry contiguous");
    TORCH_CHECK(a.size(2) == x.size(1), "lora_cpu: x and A disagree on d_in");
    TORCH_CHECK(b.size(2) == a.size(1) && b.size(3) == kWidth && b.size(1) * kWidth >= widths[j],
                "lora_cpu: B must be [entries, N / 64, R, 64] with A's R");

    TORCH_CHECK(entries[j].scalar_type() == torch::kLong && entries[j].numel() + 1 == row_start.numel(),
                "lora_cpu: entries must be int64, one per group");
  }
  TORCH_CHECK(width <= out.size(1), "lora_cpu: the modules' widths exceed out");
}

// One module's weights as the kernel reads them.
struct Module {
  const void* a;
  const void* b;
  const int64_t* entries;  // null: no adapter of the batch targets the module
  int64_t a_stride, b_stride, rank, width, offset;
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
    std::vector<uint32_t> pairs(kRows * ((max_rank + 1) / 2));  // expand_bf16's
    Prefetch pf;  // what the loop below reads, in its order
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t r0 = rs[g]; r0 < rs[g + 1]; r0 += kRows)
        for (const auto& m : modules) {
          if (m.entries == nullptr || m.entries[g] == 0) continue;
          pf.add(static_cast<const T*>(m.a) + m.entries[g] * m.a_stride, m.rank * d_in * sizeof(T));
          pf.add(static_cast<const T*>(m.b) + m.entries[g] * m.b_stride, (m.width + kWidth - 1) / kWidth * m.rank * kWidth * sizeof(T));
        }
    pf.start();
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t r0 = rs[g]; r0 < rs[g + 1]; r0 += kRows) {
        const int64_t rows = std::min(kRows, rs[g + 1] - r0);
        bool widened = false;
        for (const auto& m : modules) {
          if (m.entries == nullptr || m.entries[g] == 0) continue;  // entry 0: the adapter skips this module
          const T* a = static_cast<const T*>(m.a) + m.entries[g] * m.a_stride;
          const T* b = static_cast<const T*>(m.b) + m.entries[g] * m.b_stride;
          X* o = op + r0 * o_stride + m.offset;
          if constexpr (kBf16Dot && std::is_same_v<X, c10::BFloat16> && std::is_same_v<T, c10::BFloat16>) {
            with_count(rows, [&](auto n) {  // x read as stored: no fp32 copy
              constexpr int N = decltype(n)::value;
              shrink_bf16<N>(xp + r0 * x_stride, x_stride, a, m.rank, d_in, h.data(), pf);
              expand_bf16<N>(h.data(), m.rank, b, m.width, o, o_stride, pairs.data(), pf);
            });
            continue;
          }
          if (!widened) {
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t k = 0; k < d_in; ++k) xf[r * d_in + k] = to_float(xp[(r0 + r) * x_stride + k]);
            widened = true;
          }
          with_count(rows, [&](auto n) {
            constexpr int N = decltype(n)::value;
            for (int64_t j = 0; j < m.rank; j += 4) {  // four rows of A per prefetch step
              const int64_t count = std::min<int64_t>(4, m.rank - j);
              pf.step(count * d_in * static_cast<int64_t>(sizeof(T)) / kLine);
              dot_rows<N>(xf.data(), a + j * d_in, count, d_in, h.data() + j, m.rank);
            }
            expand_rows<N>(h.data(), m.rank, b, m.rank, m.width, o, o_stride, pf);
          });
        }
      }
    }
  });
}

}  // namespace

// One fused projection of one layer (q/k/v or gate/up, or a single module): for each module j,
// out[:, off_j:off_j+N_j] += (x @ A_j[entry]^T) @ B_j[entry] per row group. A module no adapter of the batch
// targets comes with empty entries and is skipped.
void lora_add(torch::Tensor x, std::vector<torch::Tensor> as, std::vector<torch::Tensor> bs,
              std::vector<int64_t> widths, std::vector<torch::Tensor> entries, torch::Tensor row_start,
              torch::Tensor out) {
  check(x, out, as, bs, widths, entries, row_start);
  std::vector<Module> modules;
  int64_t offset = 0;
  torch::Tensor weights;
  for (size_t j = 0; j < as.size(); ++j) {
    if (entries[j].numel() > 0) {
      modules.push_back({as[j].data_ptr(), bs[j].data_ptr(), entries[j].data_ptr<int64_t>(), as[j].stride(0),
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
