// A decode step of a few sequences through every decoder layer in one call: the same kernels, in the same
// order and with the same roundings, as Llama.forward's per-layer loop (serve/model/llama.py), without the
// ~15 Python-level calls per layer between them. At one sequence a step of a small model is mostly reading
// the weights, and those calls were a fifth of it (benchmarks/vs_llamacpp.py, row 1).
//
// Per layer i (weights[4 i .. 4 i + 3] = qkv, o, gate_up, down; norms[2 i], norms[2 i + 1] = ln1, ln2):
//   qkv = x @ Wqkv^T (+ bias);  q, k = rope(qkv);  cache[slots] = k, v;  a = attention(q, cache)
//   x = ln2(h += a @ Wo^T);  x = next ln1(h += down(silu(gate) * up))   (the last layer: h += ..., no norm)
// A weight's format (formats[j]) picks its kernel: plain (small_linear, the activations' dtype) or quantized
// (quant_linear: bf16 under fp32 activations, int8, int4).
#include <torch/extension.h>

#include <cmath>
#include <vector>

torch::Tensor small_linear(torch::Tensor x, torch::Tensor w);
torch::Tensor quant_linear(torch::Tensor x, torch::Tensor w, torch::Tensor scales, int64_t group);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
torch::Tensor add_rms_norm(torch::Tensor x, torch::Tensor delta, torch::Tensor weight, double eps);
torch::Tensor silu_mul(torch::Tensor gate_up);
std::tuple<torch::Tensor, torch::Tensor> rope_qk(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin,
                                                int64_t heads, int64_t kv_heads);
void kv_write(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots, torch::Tensor k, torch::Tensor v);
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                               torch::Tensor block_tables, torch::Tensor context_lens, double scale);

namespace {

// Must match serve/kernels/ops.py: DECODE_PLAIN, DECODE_QUANT.
enum Format : int64_t { kPlain = 0, kQuant = 1 };

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& scales, int64_t group,
                     int64_t format) {
  switch (format) {
    case kPlain: return small_linear(x, w);
    case kQuant: return quant_linear(x, w, scales, group);
    default: TORCH_CHECK(false, "decode_layers: unknown weight format ", format);
  }
  return {};
}

}  // namespace

// h: the residual stream [rows, hidden], updated in place; x: ln1 of layer 0 applied to h. Returns h.
torch::Tensor decode_layers(torch::Tensor h, torch::Tensor x, torch::Tensor cos, torch::Tensor sin,
                            torch::Tensor slots, torch::Tensor block_tables, torch::Tensor context_lens,
                            torch::Tensor k_cache, torch::Tensor v_cache, std::vector<torch::Tensor> norms,
                            std::vector<torch::Tensor> weights, std::vector<torch::Tensor> scales,
                            std::vector<int64_t> groups, std::vector<int64_t> formats,
                            std::vector<torch::Tensor> biases, int64_t heads, int64_t kv_heads, double eps) {
  const int64_t layers = static_cast<int64_t>(biases.size());
  TORCH_CHECK(norms.size() == 2 * biases.size() && weights.size() == 4 * biases.size() &&
                  scales.size() == weights.size() && groups.size() == weights.size() &&
                  formats.size() == weights.size(),
              "decode_layers: two norms, four weights (with scales, groups, formats) and a bias per layer");
  TORCH_CHECK(k_cache.size(0) == layers && v_cache.size(0) == layers, "decode_layers: one cache per layer");
  const int64_t D = cos.size(1), q_size = heads * D, kv_size = kv_heads * D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t i = 0; i < layers; ++i) {
    // x @ W^T for projection j of this layer (0 qkv, 1 o, 2 gate_up, 3 down), x being the current input.
    const auto project = [&](int64_t j) {
      const int64_t w = 4 * i + j;
      return linear(x, weights[w], scales[w], groups[w], formats[w]);
    };
    auto qkv = project(0);
    if (biases[i].numel() > 0) qkv.add_(biases[i]);
    auto [q, k] = rope_qk(qkv, cos, sin, heads, kv_heads);
    auto v = qkv.narrow(1, q_size + kv_size, kv_size).view({-1, kv_heads, D});
    auto kc = k_cache.select(0, i), vc = v_cache.select(0, i);
    kv_write(kc, vc, slots, k, v);
    x = decode_attention(q, kc, vc, block_tables, context_lens, scale).view({-1, q_size});
    x = add_rms_norm(h, project(1), norms[2 * i + 1], eps);
    x = silu_mul(project(2));
    auto down = project(3);
    if (i + 1 < layers) x = add_rms_norm(h, down, norms[2 * (i + 1)], eps);
    else h.add_(down);
  }
  return h;
}
