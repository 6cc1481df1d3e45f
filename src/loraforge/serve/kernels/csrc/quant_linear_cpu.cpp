// Linear layers over base weights stored in fewer bits than the activations (serve/model/quant.py):
//   bf16  [N, K] bfloat16                     (fp32 activations: CPUs without bf16 arithmetic, e.g. AVX2-only)
//   int8  [N, K] int8, scales [N] fp32         w = scale[n] * q
//   int4  [N, K / 2] uint8, qparams [N, K / G, 2] bf16 (scale, min)   w = scale * q + min, q in 0..15;
//         in each 32-weight block, byte i holds q[i] (low nibble) and q[i + 16] (high nibble)
// y = x @ W^T with every weight widened to fp32 in registers and fp32 sums: the weights are read from memory
// in their small form, which is what a decode step of a few rows waits for. Rows of x are taken four at a
// time against a tile of kGrain weight rows, so the tile is read from memory once and from cache after.
// Under bf16 activations, CPUs with AVX512-BF16 multiply int4 in bf16 (dot_int4_bf16) and CPUs with
// AVX512-VNNI int8 in int16 (dot_int8_vnni): fewer instructions per weight, where widening was the time.
// `dequantize` writes W in the activations' dtype, for batches large enough to be compute-bound (quant.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace {

using loraforge::dot_rows;
using loraforge::f32xv;
using loraforge::kBlockVecs;
using loraforge::kVec;
using loraforge::loadv;
using loraforge::to_float;
using loraforge::with_count;

constexpr int64_t kBlock = 32;  // the int4 block (two nibbles of 16 bytes)
constexpr int64_t kGrain = 64;  // weight rows per parallel task (a tile of 36-100 KB at int8 for d_in 576-1536)

enum class Format { kBF16, kInt8, kInt4 };

inline float bf16_bits(uint16_t bits) { return to_float(c10::BFloat16(bits, c10::BFloat16::from_bits())); }

// sum over groups of min[g] * xsum[g] (the int4 offsets), in four partial sums.
inline float min_terms(const float* xsum, const uint16_t* qj, int64_t groups) {
  float part[4] = {};
  int64_t g = 0;
  for (; g + 4 <= groups; g += 4)
    for (int i = 0; i < 4; ++i) part[i] += bf16_bits(qj[2 * (g + i) + 1]) * xsum[g + i];
  for (; g < groups; ++g) part[0] += bf16_bits(qj[2 * g + 1]) * xsum[g];
  return (part[0] + part[1]) + (part[2] + part[3]);
}

// The same for int4: per group, scale * (x . q) plus min * sum(x) from the precomputed xsum. A block's
// products are summed as a tree and the groups alternate between two accumulators, so the only chain of
// dependent adds is one multiply-add per group and accumulator (latency-bound, not read-bound, otherwise).
// Vectors of one register each: arrays of 64-byte vectors live on the stack on AVX2 (see f32xv).
template <int ROWS>
inline void dot_int4(const float* x, const float* xsum, int64_t K, int64_t G, const uint8_t* wj,
                     const uint16_t* qj, float* sums) {
  const int64_t groups = K / G;
  f32xv even[ROWS] = {}, odd[ROWS] = {};
  const auto group = [&](int64_t g, f32xv* acc) {
    f32xv t[ROWS];
    for (int64_t k0 = g * G; k0 < (g + 1) * G; k0 += kBlock) {
      f32xv q[kBlockVecs];
      loraforge::unpack_block(wj + k0 / 2, q);
      for (int r = 0; r < ROWS; ++r) {
        const float* xr = x + r * K + k0;
        f32xv p[kBlockVecs];
        for (int c = 0; c < kBlockVecs; ++c) p[c] = loadv(xr + c * kVec) * q[c];
        for (int n = kBlockVecs / 2; n >= 1; n /= 2)
          for (int c = 0; c < n; ++c) p[c] += p[c + n];
        t[r] = k0 == g * G ? p[0] : t[r] + p[0];
      }
    }
    const float scale = bf16_bits(qj[2 * g]);
    for (int r = 0; r < ROWS; ++r) acc[r] += t[r] * scale;
  };
  int64_t g = 0;
  for (; g + 1 < groups; g += 2) group(g, even), group(g + 1, odd);
  if (g < groups) group(g, even);
  for (int r = 0; r < ROWS; ++r)
    sums[r] = loraforge::sumv(even[r] + odd[r]) + min_terms(xsum + r * groups, qj, groups);
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr bool kInt16Dot = true;
constexpr int64_t kChunk = 4096;  // int32 sums stay exact: 4096 products of |x| <= 32767 and |w| <= 127 < 2^31
// int8 under bf16 activations on CPUs with AVX512-VNNI (Zen 4, Ice Lake and later): each row of x is
// held as int16 with one scale (x ~ scale * x16: relative error 2^-16 of the row's largest value, far
// below bf16's own 2^-9), the weights are sign-extended to int16, and one vpdpwssd multiplies and adds 32
// pairs in int32: 2 instructions per 32 weights where widening both to fp32 takes 6 (quant_decode.py).
inline __m512i weights16(const int8_t* p, __mmask32 mask) {
  return _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, p));
}

template <int ROWS>
inline void dot_int8_vnni(const int16_t* x, const float* x_scale, int64_t K, const int8_t* wj, float* sums) {
  __m512 total[ROWS];
  for (int r = 0; r < ROWS; ++r) total[r] = _mm512_setzero_ps();
  for (int64_t c0 = 0; c0 < K; c0 += kChunk) {
    const int64_t c1 = std::min(K, c0 + kChunk);
    __m512i even[ROWS], odd[ROWS];  // two chains of 32-weight blocks: each waits on its own last add only
    for (int r = 0; r < ROWS; ++r) even[r] = odd[r] = _mm512_setzero_si512();
    int64_t k0 = c0;
    for (; k0 + 64 <= c1; k0 += 64) {
      const __m512i w0 = weights16(wj + k0, ~0u), w1 = weights16(wj + k0 + 32, ~0u);
      for (int r = 0; r < ROWS; ++r) {
        even[r] = _mm512_dpwssd_epi32(even[r], w0, _mm512_loadu_si512(x + r * K + k0));
        odd[r] = _mm512_dpwssd_epi32(odd[r], w1, _mm512_loadu_si512(x + r * K + k0 + 32));
      }
    }
    for (; k0 < c1; k0 += 32) {  // the last block or two, masked past the chunk's end
      const __mmask32 mask = c1 - k0 >= 32 ? ~0u : (1u << (c1 - k0)) - 1;
      const __m512i w = weights16(wj + k0, mask);
      for (int r = 0; r < ROWS; ++r)
        even[r] = _mm512_dpwssd_epi32(even[r], w, _mm512_maskz_loadu_epi16(mask, x + r * K + k0));
    }
    for (int r = 0; r < ROWS; ++r)
      total[r] = _mm512_add_ps(total[r], _mm512_cvtepi32_ps(_mm512_add_epi32(even[r], odd[r])));
  }
  for (int r = 0; r < ROWS; ++r) sums[r] = _mm512_reduce_add_ps(total[r]) * x_scale[r];
}
#else
constexpr bool kInt16Dot = false;
template <int ROWS>
inline void dot_int8_vnni(const int16_t*, const float*, int64_t, const int8_t*, float*) {
  TORCH_CHECK(false, "quant_linear: built without AVX512-VNNI");  // unreachable: no int16 rows in such builds
}
#endif

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
constexpr bool kBf16Dot = true;
// int4 under bf16 activations on CPUs with AVX512-BF16 (Zen 4, Sapphire Rapids): a block's 32 values become
// bf16 (exact: 0..15) by a table lookup, and one vdpbf16ps multiplies them with the block's 32 activations
// (exact products, fp32 sums). A third of the instructions of widening both to fp32 (quant_decode.py).
inline __m512i nibble_table() {  // bf16 bits of 15.0 down to 0.0 (entries 16-31 unused)
  return _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x4170, 0x4160, 0x4150, 0x4140, 0x4130,
                          0x4120, 0x4110, 0x4100, 0x40E0, 0x40C0, 0x40A0, 0x4080, 0x4040, 0x4000, 0x3F80, 0x0000);
}

inline __m512i nibbles_bf16(const uint8_t* p, __m512i table) {
  const __m256i bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i lo = _mm256_and_si256(bytes, _mm256_set1_epi16(15)), hi = _mm256_srli_epi16(bytes, 4);
  return _mm512_permutexvar_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), table);
}

constexpr int64_t kMaxGroups = 1024;  // per weight row, for dot_int4_bf16's scales (K up to 32K at G = 32)

template <int ROWS>
inline void dot_int4_bf16(const c10::BFloat16* x, const float* xsum, int64_t K, int64_t G, const uint8_t* wj,
                          const uint16_t* qj, float* sums) {
  const int64_t groups = K / G;
  // The row's (scale, min) pairs, 16 at a time: as a 32-bit lane a pair is scale | min << 16, so the scale
  // is the lane shifted up and the min the lane's top half, both already fp32. The scales go to `scales` for
  // the group loop; the min terms (min * sum of x over the group) are summed here as vectors.
  alignas(64) float scales[kMaxGroups];
  __m512 offsets[ROWS];
  for (int r = 0; r < ROWS; ++r) offsets[r] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < groups; g0 += 16) {
    const __mmask16 mask = groups - g0 >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (groups - g0)) - 1);
    const __m512i pairs = _mm512_maskz_loadu_epi32(mask, qj + 2 * g0);
    _mm512_mask_storeu_ps(scales + g0, mask, _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16)));
    const __m512 mins = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(0xFFFF0000)));
    for (int r = 0; r < ROWS; ++r)
      offsets[r] = _mm512_fmadd_ps(mins, _mm512_maskz_loadu_ps(mask, xsum + r * groups + g0), offsets[r]);
  }
  __m512 even[ROWS], odd[ROWS];
  for (int r = 0; r < ROWS; ++r) even[r] = odd[r] = _mm512_setzero_ps();
  const __m512i table = nibble_table();
  const auto group = [&](int64_t g, __m512* acc) {
    __m512 t[ROWS];
    for (int r = 0; r < ROWS; ++r) t[r] = _mm512_setzero_ps();
    for (int64_t k0 = g * G; k0 < (g + 1) * G; k0 += kBlock) {
      const __m512bh q = reinterpret_cast<__m512bh>(nibbles_bf16(wj + k0 / 2, table));
      for (int r = 0; r < ROWS; ++r) {
        const __m512i xv = _mm512_loadu_si512(x + r * K + k0);  // the block's 32 activations, in order
        t[r] = _mm512_dpbf16_ps(t[r], q, reinterpret_cast<__m512bh>(xv));
      }
    }
    const __m512 scale = _mm512_set1_ps(scales[g]);
    for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_fmadd_ps(t[r], scale, acc[r]);
  };
  int64_t g = 0;
  for (; g + 1 < groups; g += 2) group(g, even), group(g + 1, odd);
  if (g < groups) group(g, even);
  for (int r = 0; r < ROWS; ++r)
    sums[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(even[r], odd[r]), offsets[r]));
}
#else
constexpr bool kBf16Dot = false;
constexpr int64_t kMaxGroups = 0;
template <int ROWS>
inline void dot_int4_bf16(const c10::BFloat16*, const float*, int64_t, int64_t, const uint8_t*, const uint16_t*,
                          float*) {
  TORCH_CHECK(false, "quant_linear: built without AVX512-BF16");  // unreachable: xb is null in such builds
}
#endif

// The rows of x in the forms the dot products read, each contiguous [M, K]: fp32 always; bf16 for
// dot_int4_bf16 and int16 with a scale per row for dot_int8_vnni (null where not taken); int4's sums of x
// per group.
struct Rows {
  const float* f32;
  const c10::BFloat16* bf16;
  const int16_t* i16;
  const float* i16_scale;
  const float* group_sums;
};

template <typename Out>
void run(Format fmt, const Rows& x, int64_t M, int64_t K, int64_t N, int64_t G, const void* wp, const void* sp,
         Out* op) {
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
    for (int64_t r0 = 0; r0 < M; r0 += 4) {
      with_count(std::min<int64_t>(4, M - r0), [&](auto count) {
        constexpr int R = decltype(count)::value;
        const float* xf = x.f32 + r0 * K;
        float sums[R];
        for (int64_t j = n0; j < n1; ++j) {
          float scale = 1.0f;
          if (fmt == Format::kBF16) {
            dot_rows<R>(xf, static_cast<const c10::BFloat16*>(wp) + j * K, 1, K, sums, 1);
          } else if (fmt == Format::kInt8) {
            const auto* w = static_cast<const int8_t*>(wp) + j * K;
            if (x.i16 != nullptr) dot_int8_vnni<R>(x.i16 + r0 * K, x.i16_scale + r0, K, w, sums);
            else dot_rows<R>(xf, w, 1, K, sums, 1);
            scale = static_cast<const float*>(sp)[j];
          } else {
            const auto* q = static_cast<const uint16_t*>(sp) + j * (K / G) * 2;
            const auto* w = static_cast<const uint8_t*>(wp) + j * K / 2;
            const float* xsum = x.group_sums + r0 * (K / G);
            if (x.bf16 != nullptr) dot_int4_bf16<R>(x.bf16 + r0 * K, xsum, K, G, w, q, sums);
            else dot_int4<R>(xf, xsum, K, G, w, q, sums);
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
  const bool bf16 = x.scalar_type() == torch::kBFloat16;
  Rows rows{xf.data(), nullptr, nullptr, nullptr, xsum.data()};
  // int4 under bf16 activations with AVX512-BF16: the bf16 rows themselves (dot_int4_bf16).
  torch::Tensor xb;
  if (kBf16Dot && bf16 && fmt == Format::kInt4 && K / group <= kMaxGroups) {
    xb = x.contiguous();
    rows.bf16 = xb.data_ptr<c10::BFloat16>();
  }
  // int8 under bf16 activations with AVX512-VNNI: int16 rows, each scaled to its largest value (dot_int8_vnni).
  std::vector<int16_t> x16;
  std::vector<float> x16_scale;
  if (kInt16Dot && bf16 && fmt == Format::kInt8) {
    x16.resize(M * K);
    x16_scale.resize(M);
    for (int64_t r = 0; r < M; ++r) {
      float peak = 0.0f;
      for (int64_t k = 0; k < K; ++k) peak = std::max(peak, std::abs(xf[r * K + k]));
      const float to_int = peak > 0.0f ? 32767.0f / peak : 0.0f;
      for (int64_t k = 0; k < K; ++k) x16[r * K + k] = static_cast<int16_t>(std::nearbyint(xf[r * K + k] * to_int));
      x16_scale[r] = peak / 32767.0f;
    }
    rows.i16 = x16.data();
    rows.i16_scale = x16_scale.data();
  }
  auto out = torch::empty({M, N}, x.options());
  const void* sp = scales.defined() && scales.numel() ? scales.data_ptr() : nullptr;
  if (bf16) run(fmt, rows, M, K, N, group, w.data_ptr(), sp, out.data_ptr<c10::BFloat16>());
  else run(fmt, rows, M, K, N, group, w.data_ptr(), sp, out.data_ptr<float>());
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
