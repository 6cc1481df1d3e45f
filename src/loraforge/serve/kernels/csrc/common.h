// Shared by the CPU kernels: bf16/fp32 loads as fp32; a dispatch to code compiled for 1-4 rows; a few rows of
// activations dotted with every row of a weight matrix (LoRA's shrink, and the base model's linear layers at
// decode batch sizes); a vectorizable exp; the fp32 lane count the kernels vectorize over; a 16-lane fp32
// vector type with bf16/fp32/int8 loads and int4's nibbles (register blocking the compiler does not find by
// itself; the byte loads through x86 intrinsics, see widen_bytes), and one of a register's width (f32xv) with
// its loads and stores.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace loraforge {

constexpr int64_t kLanes = 16;  // one AVX-512 register of fp32: partial sums kept per lane, summed at the end

inline float to_float(float v) { return v; }
inline float to_float(int8_t v) { return static_cast<float>(v); }
inline float to_float(c10::BFloat16 v) {
  // bf16 is the top half of an fp32: a shift, which vectorizes (c10's conversion does not).
  uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// f(std::integral_constant<int, n>{}) for n = count, 1 to 4 (more counts as 4): the kernels' row and head
// loops are compiled for each count, so their partial sums live in registers.
template <typename F>
inline void with_count(int64_t count, F&& f) {
  switch (count) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

// exp(x) for x <= 88, vectorizable, unlike std::exp without -ffast-math: 2^(x log2 e) = 2^n * 2^f with
// n = round(.), |f| <= 1/2, 2^f by its degree-7 Taylor series (relative error ~1e-8, below fp32 rounding).
// Inputs below -87 are clamped (exp(-87) ~ 1.6e-38: a softmax weight of ~0 anyway); callers keep x <= 88.
inline void exp_in_place(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float y = std::max(x[i], -87.0f) * 1.4426950408889634f;
    const float r = (y + 12582912.0f) - 12582912.0f;  // round to nearest: 1.5 * 2^23 pushes out the fraction
    const float f = y - r;
    float p = 1.525273380405984e-05f;
    p = p * f + 1.5403530393381608e-04f;
    p = p * f + 1.3333558146428443e-03f;
    p = p * f + 9.618129107628477e-03f;
    p = p * f + 5.550410866482158e-02f;
    p = p * f + 2.402265069591007e-01f;
    p = p * f + 6.931471805599453e-01f;
    p = p * f + 1.0f;
    const int32_t bits = (static_cast<int32_t>(r) + 127) << 23;  // 2^n as an fp32, n >= -126
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    x[i] = p * scale;
  }
}

// 16 fp32 lanes as a GCC/Clang vector type: one AVX-512 register (two AVX2 ones elsewhere, or NEON quads),
// for kernels whose register blocking the compiler will not find in plain loops. Loads and stores go
// through memcpy: unaligned, and free of aliasing questions.
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));

inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
// bf16 widened to fp32, as many as F has lanes (U16 and U32: vectors of as many halves and words): a shift, as
// in to_float. On AVX2 GCC 12 widens the vector type by 128-bit halves (two vpmovzxwd, a byte shift and an
// insert per 8 lanes), which left bf16 weights compute-bound on a Zen 3; one vpmovzxwd from memory per 8
// lanes is a third of the instructions (quant_decode.py, the bf16 rows).
template <typename F, typename U16, typename U32>
inline F widen_bf16(const c10::BFloat16* p) {
  F v;
#if defined(__AVX2__) && !defined(__AVX512F__)
  for (size_t i = 0; i < sizeof(F) / sizeof(__m256); ++i) {
    const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 * i));
    const __m256i bits = _mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16);
    std::memcpy(reinterpret_cast<char*>(&v) + sizeof(__m256) * i, &bits, sizeof(bits));
  }
#else
  U16 half;
  std::memcpy(&half, p, sizeof(half));
  const U32 bits = __builtin_convertvector(half, U32) << 16;
  std::memcpy(&v, &bits, sizeof(v));
#endif
  return v;
}
inline f32x16 load16(const c10::BFloat16* p) { return widen_bf16<f32x16, u16x16, u32x16>(p); }
// 16 bytes widened to 16 fp32 lanes through int32 (vpmovsxbd / vpmovzxbd + vcvtdq2ps): signed int8
// weights, or the 4-bit values of int4 (0..15, one per byte). GCC 12 scalarizes a byte -> int32
// __builtin_convertvector (a `movsbl` + `vpinsrd` per lane, ~5x slower: quant_linear's int8 and int4), so
// x86 takes the intrinsics; other targets keep the vector-extension form.
#if defined(__AVX512F__)
inline f32x16 widen_bytes(__m128i q, bool is_signed) {
  const __m512i wide = is_signed ? _mm512_cvtepi8_epi32(q) : _mm512_cvtepu8_epi32(q);
  return reinterpret_cast<f32x16>(_mm512_cvtepi32_ps(wide));
}
#elif defined(__AVX2__)
inline f32x16 widen_bytes(__m128i q, bool is_signed) {
  const __m128i top = _mm_srli_si128(q, 8);
  const __m256 lo = _mm256_cvtepi32_ps(is_signed ? _mm256_cvtepi8_epi32(q) : _mm256_cvtepu8_epi32(q));
  const __m256 hi = _mm256_cvtepi32_ps(is_signed ? _mm256_cvtepi8_epi32(top) : _mm256_cvtepu8_epi32(top));
  f32x16 v;
  std::memcpy(&v, &lo, sizeof(lo));
  std::memcpy(reinterpret_cast<char*>(&v) + sizeof(lo), &hi, sizeof(hi));
  return v;
}
#endif

inline f32x16 load16(const int8_t* p) {
#if defined(__AVX512F__) || defined(__AVX2__)
  return widen_bytes(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), true);
#else
  i8x16 q;
  std::memcpy(&q, p, sizeof(q));
  return __builtin_convertvector(__builtin_convertvector(q, i32x16), f32x16);
#endif
}

// The low and high nibbles of 16 bytes as two vectors of 16 fp32 (int4's packing, quant_linear_cpu.cpp).
inline void unpack_nibbles(const uint8_t* p, f32x16& lo, f32x16& hi) {
#if defined(__AVX512F__) || defined(__AVX2__)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), mask = _mm_set1_epi8(15);
  lo = widen_bytes(_mm_and_si128(b, mask), false);
  hi = widen_bytes(_mm_and_si128(_mm_srli_epi16(b, 4), mask), false);
#else
  u8x16 b;
  std::memcpy(&b, p, sizeof(b));
  lo = __builtin_convertvector(__builtin_convertvector(b & 15, i32x16), f32x16);
  hi = __builtin_convertvector(__builtin_convertvector(b >> 4, i32x16), f32x16);
#endif
}
inline void store16(float* p, f32x16 v) { std::memcpy(p, &v, sizeof(v)); }
inline float sum16(f32x16 v) {  // the lanes' sum, pairwise
  float s8[8];
  for (int i = 0; i < 8; ++i) s8[i] = v[i] + v[i + 8];
  for (int i = 0; i < 4; ++i) s8[i] += s8[i + 4];
  return (s8[0] + s8[2]) + (s8[1] + s8[3]);
}

// The fp32 vector of one register where the target has 64-byte ones (AVX-512), else of 32 bytes: with
// AVX2's 16 registers of 32 bytes, GCC keeps arrays of 64-byte vectors on the stack (stores and reloads
// around the multiply-adds: on a Zen 3, dot_rows in f32x16 left the LoRA of a decode step 1.5-2x slower,
// benchmarks/cpu_kernels.py, and the small-batch linear layers too).
#if defined(__AVX512F__)
constexpr int64_t kVec = 16;
#else
constexpr int64_t kVec = 8;
#endif
typedef float f32xv __attribute__((vector_size(kVec * 4)));
typedef uint16_t u16xv __attribute__((vector_size(kVec * 2)));
typedef uint32_t u32xv __attribute__((vector_size(kVec * 4)));

inline f32xv loadv(const float* p) {
  f32xv v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline f32xv loadv(const c10::BFloat16* p) { return widen_bf16<f32xv, u16xv, u32xv>(p); }
inline f32xv loadv(const int8_t* p) {  // int8 weights (quant_linear_cpu.cpp)
#if defined(__AVX512F__)
  return load16(p);
#elif defined(__AVX2__)
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m256 wide = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  f32xv v;
  std::memcpy(&v, &wide, sizeof(v));
  return v;
#else
  typedef int8_t i8xv __attribute__((vector_size(kVec)));
  typedef int32_t i32xv __attribute__((vector_size(kVec * 4)));
  i8xv q;
  std::memcpy(&q, p, sizeof(q));
  return __builtin_convertvector(__builtin_convertvector(q, i32xv), f32xv);
#endif
}
inline void storev(float* p, f32xv v) { std::memcpy(p, &v, sizeof(v)); }
inline void storev(c10::BFloat16* p, f32xv v) {  // rounded to nearest even, as c10's conversion (NaN too)
  u32xv bits;
  std::memcpy(&bits, &v, sizeof(v));
  const u32xv rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const u16xv half = __builtin_convertvector(v != v ? u32xv{} + 0x7FC0u : rounded, u16xv);
  std::memcpy(p, &half, sizeof(half));
}
// The 32 values of one int4 block (16 bytes: byte i holds value i in its low nibble and value i + 16 in its
// high one) as fp32 vectors of a register each, in order: 2 on AVX-512, 4 elsewhere.
constexpr int kBlockVecs = 32 / kVec;
inline void unpack_block(const uint8_t* p, f32xv (&q)[kBlockVecs]) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), mask = _mm_set1_epi8(15);
  const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
  const __m128i parts[4] = {lo, _mm_unpackhi_epi64(lo, lo), hi, _mm_unpackhi_epi64(hi, hi)};
  for (int c = 0; c < 4; ++c) {
    const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[c]));
    std::memcpy(&q[c], &v, sizeof(v));
  }
#else
  f32x16 lo, hi;
  unpack_nibbles(p, lo, hi);
  std::memcpy(&q[0], &lo, sizeof(lo));
  std::memcpy(&q[kBlockVecs / 2], &hi, sizeof(hi));
#endif
}

inline float sumv(f32xv v) {  // the lanes' sum, pairwise
  float s[kVec];
  std::memcpy(s, &v, sizeof(v));
  for (int64_t n = kVec / 2; n >= 1; n /= 2)
    for (int64_t i = 0; i < n; ++i) s[i] += s[i + n];
  return s[0];
}

// out[r * out_stride + j] = x[r, :] . w[j, :] for ROWS rows of x (already fp32) and `count` rows of w, in one
// pass over w: each row of w is read once for all ROWS rows, the partial sums stay in registers (two vectors
// per row) and are summed pairwise at the end: a sequential sum of the lanes cost more than the row's
// 576 multiply-adds (a chain of dependent adds). Out may be fp32 or the storage type (rounded once).
template <int ROWS, typename T, typename Out>
void dot_rows(const float* x, const T* w, int64_t count, int64_t d_in, Out* out, int64_t out_stride) {
  constexpr int64_t step = 2 * kVec;
  const int64_t body = d_in - d_in % step;
  for (int64_t j = 0; j < count; ++j) {
    const T* wj = w + j * d_in;
    f32xv acc[ROWS][2] = {};
    for (int64_t k0 = 0; k0 < body; k0 += step) {
      const f32xv w0 = loadv(wj + k0), w1 = loadv(wj + k0 + kVec);
      for (int r = 0; r < ROWS; ++r) {
        acc[r][0] += loadv(x + r * d_in + k0) * w0;
        acc[r][1] += loadv(x + r * d_in + k0 + kVec) * w1;
      }
    }
    for (int r = 0; r < ROWS; ++r) {
      float sum = sumv(acc[r][0] + acc[r][1]);
      for (int64_t k = body; k < d_in; ++k) sum += x[r * d_in + k] * to_float(wj[k]);
      out[r * out_stride + j] = static_cast<Out>(sum);
    }
  }
}

}  // namespace loraforge
