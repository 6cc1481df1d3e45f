// Decode attention straight from the paged KV cache on CPU: one query token per sequence, its context read
// in place through the block table. The PyTorch path gathers every sequence's whole context into a fresh
// tensor in every layer of every step (a copy as big as the cache in use) before two batched matmuls; this
// reads each cached K/V row once and keeps scores, softmax and the weighted sum of V in fp32 registers
// (online softmax over one cache block at a time, as in flash-decoding).
//
//   q `[batch, heads, D]`, k cache `[blocks, kv_heads, D, block_size]` (keys transposed within a block),
//   v cache `[blocks, block_size, kv_heads, D]`, block_tables `[batch, max_blocks]`, context_lens `[batch]`
//   -> `[batch, heads, D]`. Query heads h*G .. h*G+G-1 share kv head h (GQA, as in HF).
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
using loraforge::kLanes;
using loraforge::to_float;
using loraforge::with_count;

// q . k over D elements: kLanes partial sums (so the compiler vectorizes without reassociating), then a tail.
inline __attribute__((always_inline)) float dot(const float* q, const float* k, int64_t D) {
  const int64_t body = D - D % kLanes;
  float part[kLanes] = {};
  for (int64_t d0 = 0; d0 < body; d0 += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] += q[d0 + l] * k[d0 + l];
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += part[l];
  for (int64_t d = body; d < D; ++d) s += q[d] * k[d];
  return s;
}

// Per-thread working memory, sized once per parallel chunk.
struct Scratch {
  std::vector<float> q, scores, acc, key_row, value_row, row_max, row_sum;
  Scratch(int64_t heads, int64_t D, int64_t block_size)
      : q(heads * D), scores(heads * block_size), acc(heads * D), key_row(block_size), value_row(D),
        row_max(heads), row_sum(heads) {}
};

template <typename T>
inline void prefetch_block(const T* p, int64_t elements) {
  for (int64_t i = 0; i < elements; i += 64 / sizeof(T)) __builtin_prefetch(p + i);
}

// Scores of GC query heads (GC <= 4) against one block of kB keys of their kv head (`kd`: [kD, kB], keys
// transposed), into scores [GC, kB]. The GC x kB sums stay in registers, in two sets (even and odd d) so
// that consecutive multiply-adds do not wait on each other.
template <int GC, int64_t kD, int64_t kB, typename T>
void block_scores(const float* q, const T* kd, float* scores) {
  float acc[2][GC][kB] = {};
  for (int64_t d = 0; d < kD; ++d) {
    float key[kB];
    for (int64_t t = 0; t < kB; ++t) key[t] = to_float(kd[d * kB + t]);
    for (int g = 0; g < GC; ++g) {
      const float qd = q[g * kD + d];
      for (int64_t t = 0; t < kB; ++t) acc[d & 1][g][t] += qd * key[t];
    }
  }
  for (int g = 0; g < GC; ++g)
    for (int64_t t = 0; t < kB; ++t) scores[g * kB + t] = acc[0][g][t] + acc[1][g][t];
}

// acc [GC, kD] += p [GC, n] @ the block's first n value rows of one kv head (`vh`, rows `stride` apart),
// with the accumulators held in registers across the block's tokens.
template <int GC, int64_t kD, int64_t kB, typename T>
void block_values(const float* p, const T* vh, int64_t stride, int64_t n, float* acc) {
  float a[GC][kD];
  for (int g = 0; g < GC; ++g)
    for (int64_t d = 0; d < kD; ++d) a[g][d] = acc[g * kD + d];
  for (int64_t t = 0; t < n; ++t) {
    float value[kD];
    for (int64_t d = 0; d < kD; ++d) value[d] = to_float(vh[t * stride + d]);
    for (int g = 0; g < GC; ++g) {
      const float pg = p[g * kB + t];
      for (int64_t d = 0; d < kD; ++d) a[g][d] += pg * value[d];
    }
  }
  for (int g = 0; g < GC; ++g)
    for (int64_t d = 0; d < kD; ++d) acc[g * kD + d] = a[g][d];
}

// Query heads [j0, j0 + count) in groups of up to 4, the register-blocked helpers' compile-time width.
template <int64_t kD, int64_t kB, typename T>
void heads_scores(const float* q, const T* kd, float* scores, int64_t j0, int64_t count) {
  for (int64_t j = j0; j < j0 + count; j += 4) {
    with_count(j0 + count - j, [&](auto g) {
      block_scores<decltype(g)::value, kD, kB>(q + j * kD, kd, scores + j * kB);
    });
  }
}

template <int64_t kD, int64_t kB, typename T>
void heads_values(const float* scores, const T* vh, int64_t stride, int64_t n, float* acc, int64_t j0,
                  int64_t count) {
  for (int64_t j = j0; j < j0 + count; j += 4) {
    with_count(j0 + count - j, [&](auto g) {
      block_values<decltype(g)::value, kD, kB>(scores + j * kB, vh, stride, n, acc + j * kD);
    });
  }
}

// The same two steps for any head and block size (loops bounded at run time, sums in memory).
template <typename T>
void scores_any_size(const float* q, const T* kd, int64_t D, int64_t B, float* scores, int64_t j0,
                     int64_t count, float* key) {
  std::fill(scores + j0 * B, scores + (j0 + count) * B, 0.0f);
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t t = 0; t < B; ++t) key[t] = to_float(kd[d * B + t]);
    for (int64_t j = j0; j < j0 + count; ++j)
      for (int64_t t = 0; t < B; ++t) scores[j * B + t] += q[j * D + d] * key[t];
  }
}

template <typename T>
void values_any_size(const float* scores, const T* vh, int64_t stride, int64_t n, int64_t D, int64_t B,
                     float* acc, int64_t j0, int64_t count, float* value) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t d = 0; d < D; ++d) value[d] = to_float(vh[t * stride + d]);
    for (int64_t j = j0; j < j0 + count; ++j)
      for (int64_t d = 0; d < D; ++d) acc[j * D + d] += scores[j * B + t] * value[d];
  }
}

// One sequence, all heads, over `len` cached tokens; s.q holds its queries, already scaled. Query head j
// uses kv head j / G. Keys are stored transposed per block ([kv_heads, D, block_size]), so q . k for a whole
// block is D multiply-adds of q[d] into a vector over the block's tokens (no per-token horizontal sums);
// values are token rows ([block_size, kv_heads, D]), added into the heads' accumulators.
// kD and kBlock are the head and block sizes when known at compile time (0: use the runtime ones): the
// loops over them are a few vectors long, and compiled for a runtime size they spend more time on loop
// set-up than on arithmetic.
template <typename T, int64_t kD, int64_t kBlock>
void attend(Scratch& s, int64_t heads, int64_t G, int64_t head_dim, int64_t kv_heads, const T* k, const T* v,
            const int64_t* table, int64_t block_size, int64_t len, T* out) {
  const int64_t D = kD ? kD : head_dim, B = kBlock ? kBlock : block_size, block = B * kv_heads * D;
  float* scores = s.scores.data();
  float* acc = s.acc.data();
  // The first block's correction exp(lowest - max) underflows to 0, wiping the (zero) accumulators.
  std::fill(s.row_max.begin(), s.row_max.end(), std::numeric_limits<float>::lowest());
  std::fill(s.row_sum.begin(), s.row_sum.end(), 0.0f);
  std::fill(acc, acc + heads * D, 0.0f);
  for (int64_t start = 0; start < len; start += B) {
    const int64_t n = std::min(B, len - start);
    const T* kb = k + table[start / B] * block;
    const T* vb = v + table[start / B] * block;
    if (start + B < len) {  // blocks lie anywhere in the cache: fetch the next one meanwhile
      const int64_t next = table[start / B + 1] * block;
      prefetch_block(k + next, block);
      prefetch_block(v + next, block);
    }
    // Scores of all B slots (slots past n hold stale but finite values and are never used).
    for (int64_t h = 0; h < kv_heads; ++h) {
      if constexpr (kD != 0 && kBlock != 0) {
        heads_scores<kD, kBlock>(s.q.data(), kb + h * D * B, scores, h * G, G);
      } else {
        scores_any_size(s.q.data(), kb + h * D * B, D, B, scores, h * G, G, s.key_row.data());
      }
    }
    for (int64_t j = 0; j < heads; ++j) {
      float* sj = scores + j * B;
      const float new_max = std::max(s.row_max[j], *std::max_element(sj, sj + n));
      float correction = s.row_max[j] - new_max;
      exp_in_place(&correction, 1);
      for (int64_t t = 0; t < n; ++t) sj[t] -= new_max;
      exp_in_place(sj, n);
      float sum = 0.0f;
      for (int64_t t = 0; t < n; ++t) sum += sj[t];
      s.row_sum[j] = s.row_sum[j] * correction + sum;
      s.row_max[j] = new_max;
      float* aj = acc + j * D;
      for (int64_t d = 0; d < D; ++d) aj[d] *= correction;
    }
    for (int64_t h = 0; h < kv_heads; ++h) {
      if constexpr (kD != 0 && kBlock != 0) {
        heads_values<kD, kBlock>(scores, vb + h * D, kv_heads * D, n, acc, h * G, G);
      } else {
        values_any_size(scores, vb + h * D, kv_heads * D, n, D, B, acc, h * G, G, s.value_row.data());
      }
    }
  }
  for (int64_t j = 0; j < heads; ++j)
    for (int64_t d = 0; d < D; ++d) out[j * D + d] = static_cast<T>(acc[j * D + d] / s.row_sum[j]);
}

template <typename T>
void decode_attention_impl(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                           const torch::Tensor& block_tables, const torch::Tensor& context_lens, double scale,
                           torch::Tensor& out) {
  const int64_t batch = q.size(0), heads = q.size(1), D = q.size(2);
  const int64_t kv_heads = k_cache.size(1), block_size = k_cache.size(3), G = heads / kv_heads;
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const int64_t table_stride = block_tables.stride(0);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    Scratch scratch(heads, D, block_size);
    for (int64_t b = b0; b < b1; ++b) {
      const T* qb = qp + b * heads * D;
      for (int64_t i = 0; i < heads * D; ++i) scratch.q[i] = to_float(qb[i]) * static_cast<float>(scale);
      const int64_t* table = tables + b * table_stride;
      T* o = op + b * heads * D;
      if (D == 64 && block_size == 16)
        attend<T, 64, 16>(scratch, heads, G, D, kv_heads, kp, vp, table, block_size, lens[b], o);
      else if (D == 128 && block_size == 16)
        attend<T, 128, 16>(scratch, heads, G, D, kv_heads, kp, vp, table, block_size, lens[b], o);
      else
        attend<T, 0, 0>(scratch, heads, G, D, kv_heads, kp, vp, table, block_size, lens[b], o);
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
  if (q.scalar_type() == torch::kBFloat16)
    decode_attention_impl<c10::BFloat16>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
  else if (q.scalar_type() == torch::kFloat)
    decode_attention_impl<float>(q, k_cache, v_cache, block_tables, context_lens, scale, out);
  else
    TORCH_CHECK(false, "decode_attention: bf16 or fp32 only");
  return out;
}
