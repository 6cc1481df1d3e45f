// Linear layers over base weights stored in fewer bits than the activations (serve/model/quant.py):
//   bf16  [N, K] bfloat16                     (fp32 activations: CPUs without bf16 arithmetic, e.g. AVX2-only)
//   int8  [N, K] int8, scales [N] fp32         w = scale[n] * q
//   int4  [N, K / 2] uint8, qparams [N, K / G, 2] bf16 (scale, min)   w = scale * q + min, q in 0..15;
//         in each 32-weight block, byte i holds q[i] (low nibble) and q[i + 16] (high nibble)
// y = x @ W^T with every weight widened to fp32 in registers and fp32 sums: the weights are read from memory
// in their small form, which is what a decode step of a few rows waits for. Rows of x are taken four at a
// time against a tile of kGrain weight rows, so the tile is read from memory once and from cache after.
// `dequantize` writes W in the activations' dtype, for batches large enough to be compute-bound (quant.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

#include "common.h"

namespace {

using loraforge::f32x16;
using loraforge::load16;
using loraforge::sum16;
using loraforge::to_float;
using loraforge::u8x16;
using loraforge::with_count;

constexpr int64_t kBlock = 32;  // the int4 block (two nibbles of 16 bytes), and the plain loop's d_in step
constexpr int64_t kGrain = 64;  // weight rows per parallel task (a tile of 36-100 KB at int8 for d_in 576-1536)

enum class Format { kBF16, kInt8, kInt4 };

inline float bf16_bits(uint16_t bits) { return to_float(c10::BFloat16(bits, c10::BFloat16::from_bits())); }

// The low and high nibbles of 16 bytes as two vectors of 16 fp32: weights k0..k0+15 and k0+16..k0+31.
inline void unpack32(const uint8_t* p, f32x16& lo, f32x16& hi) {
  u8x16 b;
  std::memcpy(&b, p, sizeof(b));
  lo = __builtin_convertvector(__builtin_convertvector(b & 15, loraforge::i32x16), f32x16);  // via int32: see
  hi = __builtin_convertvector(__builtin_convertvector(b >> 4, loraforge::i32x16), f32x16);  // common.h
}

// sums[r] = x[r, :] . w[j, :] (before the int8 scale) for ROWS rows of x, for bf16 or int8 weights.
template <int ROWS, typename W>
inline void dot_plain(const float* x, int64_t K, const W* wj, float* sums) {
  const int64_t body = K - K % kBlock;
  f32x16 acc[ROWS][2] = {};
  for (int64_t k0 = 0; k0 < body; k0 += kBlock) {
    const f32x16 w0 = load16(wj + k0), w1 = load16(wj + k0 + 16);
    for (int r = 0; r < ROWS; ++r) {
      acc[r][0] += load16(x + r * K + k0) * w0;
      acc[r][1] += load16(x + r * K + k0 + 16) * w1;
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    float s = sum16(acc[r][0] + acc[r][1]);
    for (int64_t k = body; k < K; ++k) s += x[r * K + k] * to_float(wj[k]);
    sums[r] = s;
  }
}

// The same for int4: per group, scale * (x . q) as vectors plus min * sum(x) from the precomputed xsum.
template <int ROWS>
inline void dot_int4(const float* x, const float* xsum, int64_t K, int64_t G, const uint8_t* wj,
                     const uint16_t* qj, float* sums) {
  const int64_t groups = K / G;
  f32x16 acc[ROWS] = {};
  float offset[ROWS] = {};
  for (int64_t g = 0; g < groups; ++g) {
    f32x16 t[ROWS] = {};
    for (int64_t k0 = g * G; k0 < (g + 1) * G; k0 += kBlock) {
      f32x16 lo, hi;
      unpack32(wj + k0 / 2, lo, hi);
      for (int r = 0; r < ROWS; ++r) t[r] += load16(x + r * K + k0) * lo + load16(x + r * K + k0 + 16) * hi;
    }
    const float scale = bf16_bits(qj[2 * g]), min = bf16_bits(qj[2 * g + 1]);
    for (int r = 0; r < ROWS; ++r) {
      acc[r] += t[r] * scale;
      offset[r] += min * xsum[r * groups + g];
    }
  }
  for (int r = 0; r < ROWS; ++r) sums[r] = sum16(acc[r]) + offset[r];
}

template <typename Out>
void run(Format fmt, const float* xf, const float* xsum, int64_t M, int64_t K, int64_t N, int64_t G,
         const void* wp, const void* sp, Out* op) {
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
    for (int64_t r0 = 0; r0 < M; r0 += 4) {
      with_count(std::min<int64_t>(4, M - r0), [&](auto count) {
        constexpr int R = decltype(count)::value;
        const float* x = xf + r0 * K;
        float sums[R];
        for (int64_t j = n0; j < n1; ++j) {
          float scale = 1.0f;
          if (fmt == Format::kBF16) {
            dot_plain<R>(x, K, static_cast<const c10::BFloat16*>(wp) + j * K, sums);
          } else if (fmt == Format::kInt8) {
            dot_plain<R>(x, K, static_cast<const int8_t*>(wp) + j * K, sums);
            scale = static_cast<const float*>(sp)[j];
          } else {
            const auto* q = static_cast<const uint16_t*>(sp) + j * (K / G) * 2;
            dot_int4<R>(x, xsum + r0 * (K / G), K, G, static_cast<const uint8_t*>(wp) + j * K / 2, q, sums);
          }
          for (int r = 0; r < R; ++r) op[(r0 + r) * N + j] = static_cast<Out>(sums[r] * scale);
        }
      });
    }
  });
}

// The format of `w` (and the checks its companions must pass), K the input size.
Format format_of(const torch::Tensor& w, const torch::Tensor& scales, int64_t K, int64_t G) {
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 2 && w.is_contiguous(), "quant_linear: w must be [N, K] on CPU");
  const int64_t N = w.size(0);
  switch (w.scalar_type()) {
    case torch::kBFloat16:
      TORCH_CHECK(w.size(1) == K, "quant_linear: bf16 w must be [N, K]");
      return Format::kBF16;
    case torch::kChar:
      TORCH_CHECK(w.size(1) == K, "quant_linear: int8 w must be [N, K]");
      TORCH_CHECK(scales.scalar_type() == torch::kFloat && scales.is_contiguous() && scales.numel() == N,
                  "quant_linear: int8 needs fp32 scales [N]");
      return Format::kInt8;
    case torch::kByte:
      TORCH_CHECK(G > 0 && G % kBlock == 0 && K % G == 0 && w.size(1) * 2 == K,
                  "quant_linear: int4 needs w [N, K / 2] and a group size dividing K, a multiple of 32");
      TORCH_CHECK(scales.scalar_type() == torch::kBFloat16 && scales.is_contiguous() &&
                      scales.numel() == N * (K / G) * 2,
                  "quant_linear: int4 needs bf16 qparams [N, K / group, 2]");
      return Format::kInt4;
    default:
      TORCH_CHECK(false, "quant_linear: weights must be bf16, int8 or packed int4 (uint8)");
  }
  return Format::kBF16;
}

}  // namespace

torch::Tensor quant_linear(torch::Tensor x, torch::Tensor w, torch::Tensor scales, int64_t group) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.stride(1) == 1, "quant_linear: x must be [M, K], CPU");
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16,
              "quant_linear: x must be fp32 or bf16");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const Format fmt = format_of(w, scales, K, group);
  std::vector<float> xf(M * K);  // fp32 rows, contiguous
  if (x.scalar_type() == torch::kFloat) {
    for (int64_t r = 0; r < M; ++r) std::memcpy(&xf[r * K], x.data_ptr<float>() + r * x.stride(0), K * 4);
  } else {
    const auto* xp = x.data_ptr<c10::BFloat16>();
    for (int64_t r = 0; r < M; ++r)
      for (int64_t k = 0; k < K; ++k) xf[r * K + k] = to_float(xp[r * x.stride(0) + k]);
  }
  std::vector<float> xsum;  // int4: each row's sum over each group, for the groups' min term
  if (fmt == Format::kInt4) {
    xsum.assign(M * (K / group), 0.0f);
    for (int64_t r = 0; r < M; ++r)
      for (int64_t k = 0; k < K; ++k) xsum[r * (K / group) + k / group] += xf[r * K + k];
  }
  auto out = torch::empty({M, N}, x.options());
  const void* sp = scales.defined() && scales.numel() ? scales.data_ptr() : nullptr;
  if (x.scalar_type() == torch::kFloat)
    run(fmt, xf.data(), xsum.data(), M, K, N, group, w.data_ptr(), sp, out.data_ptr<float>());
  else
    run(fmt, xf.data(), xsum.data(), M, K, N, group, w.data_ptr(), sp, out.data_ptr<c10::BFloat16>());
  return out;
}

torch::Tensor dequantize(torch::Tensor w, torch::Tensor scales, int64_t group, int64_t in_features, bool bf16) {
  const int64_t K = in_features, N = w.size(0);
  const Format fmt = format_of(w, scales, K, group);
  auto out = torch::empty({N, K}, w.options().dtype(bf16 ? torch::kBFloat16 : torch::kFloat));
  auto fill = [&](auto* op) {
    using Out = std::remove_pointer_t<decltype(op)>;
    at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
      for (int64_t j = n0; j < n1; ++j) {
        Out* o = op + j * K;
        if (fmt == Format::kBF16) {
          const auto* wj = w.data_ptr<c10::BFloat16>() + j * K;
          for (int64_t k = 0; k < K; ++k) o[k] = static_cast<Out>(to_float(wj[k]));
        } else if (fmt == Format::kInt8) {
          const int8_t* wj = w.data_ptr<int8_t>() + j * K;
          const float s = scales.data_ptr<float>()[j];
          for (int64_t k = 0; k < K; ++k) o[k] = static_cast<Out>(s * static_cast<float>(wj[k]));
        } else {
          const uint8_t* wj = w.data_ptr<uint8_t>() + j * K / 2;
          const auto* q = reinterpret_cast<const uint16_t*>(scales.data_ptr()) + j * (K / group) * 2;
          for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
            const float s = bf16_bits(q[2 * (k0 / group)]), m = bf16_bits(q[2 * (k0 / group) + 1]);
            for (int64_t i = 0; i < 16; ++i) {
              const uint8_t b = wj[k0 / 2 + i];
              o[k0 + i] = static_cast<Out>(s * static_cast<float>(b & 15) + m);
              o[k0 + 16 + i] = static_cast<Out>(s * static_cast<float>(b >> 4) + m);
            }
          }
        }
      }
    });
  };
  if (!bf16) fill(out.data_ptr<float>());
  else fill(out.data_ptr<c10::BFloat16>());
  return out;
}
