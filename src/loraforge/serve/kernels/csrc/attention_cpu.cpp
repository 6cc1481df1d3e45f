// Decode attention straight from the paged KV cache on CPU: one query token per sequence, its context read
// in place through the block table. The PyTorch path gathers every sequence's whole context into a fresh
// tensor in every layer of every step (a copy as big as the cache in use) before two batched matmuls; this
// reads each cached K/V row once.
//
//   q `[batch, heads, D]`, k cache `[blocks, kv_heads, D, block_size]` (keys transposed within a block),
//   v cache `[blocks, block_size, kv_heads, D]`, block_tables `[batch, max_blocks]`, context_lens `[batch]`
//   -> `[batch, heads, D]`. Query heads h*G .. h*G+G-1 share kv head h (GQA, as in HF).
//
// Per sequence, in three passes: every score of the context (all heads), one softmax per head over its whole
// row, then the probability-weighted sum of the value rows. A decode context is short enough (scores of 8k
// tokens x 32 heads are 1 MiB) that the scores stay in cache, so the running max and rescaling of an online
// softmax would only add work: done per 16-token block they cost more than the block's arithmetic.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"

namespace {

using loraforge::exp_in_place;
using loraforge::f32x16;
using loraforge::kLanes;
using loraforge::load16;
using loraforge::store16;
using loraforge::to_float;
using loraforge::with_count;

// The register-blocked path is compiled for blocks of 4, 8 and 16 tokens (one fp32 vector of kB lanes holds a
// block's scores); other block sizes take the loops of `scores_any_size` / `values_any_size`. Small blocks
// let the prefix cache share a short prompt start (evaluate/engine_backend.py).
template <int64_t kB>
struct BlockVec {
  typedef float type __attribute__((vector_size(kB * sizeof(float))));
};

template <int64_t kB, typename T>
inline typename BlockVec<kB>::type load_block(const T* p) {
  typename BlockVec<kB>::type v;
  if constexpr (kB == 16) {  // decode's blocks: the widening load of common.h
    const f32x16 full = load16(p);
    std::memcpy(&v, &full, sizeof(v));
  } else {
    for (int64_t i = 0; i < kB; ++i) v[i] = to_float(p[i]);
  }
  return v;
}

template <typename T>
inline void prefetch_block(const T* p, int64_t elements) {
  for (int64_t i = 0; i < elements; i += 64 / sizeof(T)) __builtin_prefetch(p + i);
}

// Largest of x[0, n): kLanes running maxima, so the loop vectorizes (a single running max would not).
inline float row_max(const float* x, int64_t n) {
  float part[kLanes];
  std::fill(part, part + kLanes, std::numeric_limits<float>::lowest());
  const int64_t body = n - n % kLanes;
  for (int64_t i = 0; i < body; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] = std::max(part[l], x[i + l]);
  float m = *std::max_element(part, part + kLanes);
  for (int64_t i = body; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// Pass 1, compiled sizes: scores [GC, kB] (rows `stride` apart) of GC query heads (q: [GC, kD], scaled)
// against one block of one kv head's keys (`kd`: [kD, kB], transposed). Keys transposed make q . k for the
// block's kB tokens kD multiply-adds of q[d] into one vector; two sets of sums (even and odd d) so that
// consecutive multiply-adds do not wait on each other.
template <int GC, int64_t kD, int64_t kB, typename T>
inline void block_scores(const float* q, const T* kd, float* scores, int64_t stride) {
  using V = typename BlockVec<kB>::type;
  V even[GC] = {}, odd[GC] = {};
  for (int64_t d = 0; d < kD; d += 2) {
    const V k0 = load_block<kB>(kd + d * kB), k1 = load_block<kB>(kd + (d + 1) * kB);
    for (int g = 0; g < GC; ++g) {
      even[g] += q[g * kD + d] * k0;
      odd[g] += q[g * kD + d + 1] * k1;
    }
  }
  for (int g = 0; g < GC; ++g) {
    const V sum = even[g] + odd[g];
    std::memcpy(scores + g * stride, &sum, sizeof(sum));
  }
}

// Pass 3, compiled sizes: acc [GC, kD] = p [GC, len] (rows `p_stride` apart) @ the sequence's value rows
// of one kv head (`v`: that head's first row in the cache; rows `row_stride` apart, blocks `block` apart),
// every sum in registers for the whole context. `prefetch`: fetch each next block (all heads) meanwhile.
template <int GC, int64_t kD, int64_t kB, typename T>
void head_values(const float* p, int64_t p_stride, const T* v, const int64_t* table, int64_t block,
                 int64_t row_stride, int64_t len, bool prefetch, float* acc) {
  constexpr int64_t kV = kD / 16;
  f32x16 a[GC][kV] = {};
  for (int64_t start = 0; start < len; start += kB) {
    const T* vb = v + table[start / kB] * block;
    if (prefetch && start + kB < len) prefetch_block(v + table[start / kB + 1] * block, block);
    const int64_t n = std::min(kB, len - start);
    for (int64_t t = 0; t < n; ++t) {
      f32x16 row[kV];
      for (int64_t i = 0; i < kV; ++i) row[i] = load16(vb + t * row_stride + i * 16);
      for (int g = 0; g < GC; ++g) {
        const float pg = p[g * p_stride + start + t];
        for (int64_t i = 0; i < kV; ++i) a[g][i] += pg * row[i];
      }
    }
  }
  for (int g = 0; g < GC; ++g)
    for (int64_t i = 0; i < kV; ++i) store16(acc + g * kD + i * 16, a[g][i]);
}

// Query heads [j0, j0 + count) of one kv head in groups that keep their sums in registers: 4 heads of 64
// dimensions (16 vectors), 2 of 128.
template <int64_t kD, typename F>
inline void head_groups(int64_t j0, int64_t count, F&& f) {
  constexpr int64_t kGroup = kD <= 64 ? 4 : 2;
  for (int64_t j = j0; j < j0 + count; j += kGroup)
    with_count(std::min(kGroup, j0 + count - j), [&](auto g) { f(j, g); });
}

// The same passes for any head and block size (loops bounded at run time, sums in memory).
template <typename T>
void scores_any_size(const float* q, const T* kd, int64_t D, int64_t B, int64_t n, float* scores,
                     int64_t stride, int64_t j0, int64_t count) {
  for (int64_t j = j0; j < j0 + count; ++j) {
    float* sj = scores + j * stride;
    std::fill(sj, sj + n, 0.0f);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t t = 0; t < n; ++t) sj[t] += q[j * D + d] * to_float(kd[d * B + t]);
  }
}

template <typename T>
void values_any_size(const float* p, int64_t p_stride, const T* v, const int64_t* table, int64_t B,
                     int64_t block, int64_t row_stride, int64_t len, int64_t D, float* acc, int64_t j0,
                     int64_t count) {
  std::fill(acc + j0 * D, acc + (j0 + count) * D, 0.0f);
  for (int64_t t = 0; t < len; ++t) {
    const T* row = v + table[t / B] * block + (t % B) * row_stride;
    for (int64_t j = j0; j < j0 + count; ++j)
      for (int64_t d = 0; d < D; ++d) acc[j * D + d] += p[j * p_stride + t] * to_float(row[d]);
  }
}

// One sequence, all heads, over `len` cached tokens: q (fp32, scaled) -> out. Per-thread scratch: `scores`
// [heads, len rounded up to B], `acc` [heads, D], `sums` [heads]. kD: the head size when compiled for it
// (0: runtime sizes), kB the block size it is compiled for.
template <typename T, int64_t kD, int64_t kB>
void attend(const float* q, int64_t heads, int64_t G, int64_t head_dim, int64_t kv_heads, const T* k,
            const T* v, const int64_t* table, int64_t B, int64_t len, float* scores, float* acc, float* sums,
            T* out) {
  const int64_t D = kD ? kD : head_dim, block = B * kv_heads * D, stride = (len + B - 1) / B * B;
  for (int64_t start = 0; start < len; start += B) {
    const T* kb = k + table[start / B] * block;
    if (start + B < len) prefetch_block(k + table[start / B + 1] * block, block);  // blocks lie anywhere
    for (int64_t h = 0; h < kv_heads; ++h) {
      if constexpr (kD != 0) {
        head_groups<kD>(h * G, G, [&](int64_t j, auto g) {
          block_scores<decltype(g)::value, kD, kB>(q + j * kD, kb + h * kD * kB, scores + j * stride + start,
                                                   stride);
        });
      } else {
        scores_any_size(q, kb + h * D * B, D, B, std::min(B, len - start), scores + start, stride, h * G, G);
      }
    }
  }
  for (int64_t j = 0; j < heads; ++j) {  // softmax numerators in place; normalized at the end
    float* sj = scores + j * stride;
    const float m = row_max(sj, len);
    for (int64_t t = 0; t < len; ++t) sj[t] -= m;
    exp_in_place(sj, len);
    float part[kLanes] = {}, sum = 0.0f;
    const int64_t body = len - len % kLanes;
    for (int64_t t = 0; t < body; t += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) part[l] += sj[t + l];
    for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
    for (int64_t t = body; t < len; ++t) sum += sj[t];
    sums[j] = sum;
  }
  for (int64_t h = 0; h < kv_heads; ++h) {
    const T* vh = v + h * D;
    if constexpr (kD != 0) {
      head_groups<kD>(h * G, G, [&](int64_t j, auto g) {
        head_values<decltype(g)::value, kD, kB>(scores + j * stride, stride, vh, table, block, kv_heads * kD, len,
                                            h == 0 && j == 0, acc + j * kD);
      });
    } else {
      values_any_size(scores, stride, vh, table, B, block, kv_heads * D, len, D, acc, h * G, G);
    }
  }
  for (int64_t j = 0; j < heads; ++j)
    for (int64_t d = 0; d < D; ++d) out[j * D + d] = static_cast<T>(acc[j * D + d] / sums[j]);
}

template <typename T>
void decode_attention_impl(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                           const torch::Tensor& block_tables, const torch::Tensor& context_lens, double scale,
                           torch::Tensor& out) {
  const int64_t batch = q.size(0), heads = q.size(1), D = q.size(2);
  const int64_t kv_heads = k_cache.size(1), B = k_cache.size(3), G = heads / kv_heads;
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const int64_t table_stride = block_tables.stride(0);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    const int64_t longest = *std::max_element(lens + b0, lens + b1);
    std::vector<float> qf(heads * D), acc(heads * D), sums(heads);
    std::vector<float> scores(heads * ((longest + B - 1) / B * B));
    for (int64_t b = b0; b < b1; ++b) {
      const T* qb = qp + b * heads * D;
      for (int64_t i = 0; i < heads * D; ++i) qf[i] = to_float(qb[i]) * static_cast<float>(scale);
      const int64_t* table = tables + b * table_stride;
      T* o = op + b * heads * D;
      auto run = [&](auto head_size, auto block_size) {
        attend<T, decltype(head_size)::value, decltype(block_size)::value>(
            qf.data(), heads, G, D, kv_heads, kp, vp, table, B, lens[b], scores.data(), acc.data(), sums.data(),
            o);
      };
      auto with_block = [&](auto head_size) {
        if (B == 16) run(head_size, std::integral_constant<int64_t, 16>{});
        else if (B == 8) run(head_size, std::integral_constant<int64_t, 8>{});
        else if (B == 4) run(head_size, std::integral_constant<int64_t, 4>{});
        else run(std::integral_constant<int64_t, 0>{}, std::integral_constant<int64_t, 0>{});
      };
      if (D == 64) with_block(std::integral_constant<int64_t, 64>{});
      else if (D == 128) with_block(std::integral_constant<int64_t, 128>{});
      else run(std::integral_constant<int64_t, 0>{}, std::integral_constant<int64_t, 0>{});
    }
  });
}

}  // namespace

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                               torch::Tensor block_tables, torch::Tensor context_lens, double scale) {
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu() && v_cache.device().is_cpu() &&
                  block_tables.device().is_cpu() && context_lens.device().is_cpu(),
              "decode_attention: CPU tensors only");
  TORCH_CHECK(q.dim() == 3 && q.is_contiguous(), "decode_attention: q must be a contiguous [batch, heads, D]");
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.size(0) == v_cache.size(0) && k_cache.size(1) == v_cache.size(2) &&
                  k_cache.size(2) == v_cache.size(3) && k_cache.size(3) == v_cache.size(1),
              "decode_attention: caches must be contiguous k [blocks, kv_heads, D, block_size] and "
              "v [blocks, block_size, kv_heads, D]");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "decode_attention: q and the cache differ in dtype");
  TORCH_CHECK(k_cache.size(2) == q.size(2) && q.size(1) % k_cache.size(1) == 0,
              "decode_attention: head sizes of q and the cache disagree");
  TORCH_CHECK(block_tables.scalar_type() == torch::kLong && context_lens.scalar_type() == torch::kLong &&
                  block_tables.dim() == 2 && block_tables.stride(1) == 1 && context_lens.is_contiguous() &&
                  block_tables.size(0) == q.size(0) && context_lens.size(0) == q.size(0),
              "decode_attention: block_tables [batch, max_blocks] and context_lens [batch], int64");
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  const int64_t capacity = block_tables.size(1) * k_cache.size(3);
  TORCH_CHECK(std::all_of(lens, lens + context_lens.numel(), [=](int64_t n) { return n > 0 && n <= capacity; }),
              "decode_attention: context lengths must be in [1, max_blocks * block_size]");
  auto out = torch::empty_like(q);
  if (q.size(0) == 0) return out;
  if (q.scalar_type() == torch::kBFloat16)
    decode_attention_impl<c10::BFloat16>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
  else if (q.scalar_type() == torch::kFloat)
    decode_attention_impl<float>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
  else
    TORCH_CHECK(false, "decode_attention: bf16 or fp32 only");
  return out;
}
