// Writing the new tokens' K and V into the paged cache, in one pass. In PyTorch that is an advanced-index
// assignment for the transposed K blocks plus an index_copy_ for V, with a division and a remainder of the
// slot ids, per layer: ~50 us a layer at decode batch sizes, mostly dispatch.
//
//   K cache: [blocks, kv_heads, D, block_size]  (keys transposed within a block, see kv_cache.py)
//   V cache: [blocks, block_size, kv_heads, D]
//   token t goes to block slot[t] / block_size, offset slot[t] % block_size
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

namespace {

template <typename T>
void kv_write_impl(torch::Tensor& k_cache, torch::Tensor& v_cache, const torch::Tensor& slots,
                   const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t tokens = slots.size(0), H = k.size(1), D = k.size(2), B = k_cache.size(3);
  const int64_t* sp = slots.data_ptr<int64_t>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* kc = k_cache.data_ptr<T>();
  T* vc = v_cache.data_ptr<T>();
  // A decode step's few tokens are less work than waking a thread; a prefill's thousands are not.
  at::parallel_for(0, tokens, 256, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t block = sp[t] / B, offset = sp[t] % B;
      for (int64_t h = 0; h < H; ++h) {
        const T* kr = kp + t * k.stride(0) + h * k.stride(1);
        const T* vr = vp + t * v.stride(0) + h * v.stride(1);
        T* kdst = kc + ((block * H + h) * D) * B + offset;
        T* vdst = vc + ((block * B + offset) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) kdst[d * B] = kr[d];
        for (int64_t d = 0; d < D; ++d) vdst[d] = vr[d];
      }
    }
  });
}

}  // namespace

void kv_write(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots, torch::Tensor k, torch::Tensor v) {
  TORCH_CHECK(k_cache.device().is_cpu() && k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.dim() == 4 &&
                  v_cache.dim() == 4,
              "kv_write: caches must be contiguous CPU [blocks, ...] tensors of one layer");
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes() && k.stride(2) == 1 && v.stride(2) == 1,
              "kv_write: k and v must be [tokens, kv_heads, head_dim] with unit-stride rows");
  const int64_t blocks = k_cache.size(0), H = k.size(1), D = k.size(2), B = k_cache.size(3);
  TORCH_CHECK(k_cache.size(1) == H && k_cache.size(2) == D && v_cache.size(0) == blocks && v_cache.size(1) == B &&
                  v_cache.size(2) == H && v_cache.size(3) == D,
              "kv_write: cache shapes do not match k/v");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == k_cache.scalar_type() &&
                  v_cache.scalar_type() == k_cache.scalar_type(),
              "kv_write: k, v and the caches must share a dtype");
  TORCH_CHECK(slots.scalar_type() == torch::kLong && slots.dim() == 1 && slots.is_contiguous() &&
                  slots.size(0) == k.size(0),
              "kv_write: slots must be a contiguous int64 [tokens]");
  const int64_t* sp = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < slots.size(0); ++t)
    TORCH_CHECK(sp[t] >= 0 && sp[t] < blocks * B, "kv_write: slot ", sp[t], " is outside the cache");
  if (k.scalar_type() == torch::kBFloat16) kv_write_impl<c10::BFloat16>(k_cache, v_cache, slots, k, v);
  else if (k.scalar_type() == torch::kFloat) kv_write_impl<float>(k_cache, v_cache, slots, k, v);
  else TORCH_CHECK(false, "kv_write: bf16 or fp32 only");
}
