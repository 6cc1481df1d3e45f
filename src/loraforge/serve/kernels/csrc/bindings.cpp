// The Python module of the CPU kernels: one build of every csrc/*.cpp file.
#include <torch/extension.h>

#include <vector>

void lora_add(torch::Tensor x, std::vector<torch::Tensor> as, std::vector<torch::Tensor> bs,
              std::vector<int64_t> widths, std::vector<torch::Tensor> entries, torch::Tensor row_start,
              torch::Tensor out);
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                               torch::Tensor block_tables, torch::Tensor context_lens, double scale);
torch::Tensor small_linear(torch::Tensor x, torch::Tensor w);
void kv_write(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots, torch::Tensor k, torch::Tensor v);
torch::Tensor argmax_rows(torch::Tensor logits);
torch::Tensor quant_linear(torch::Tensor x, torch::Tensor w, torch::Tensor scales, int64_t group);
torch::Tensor dequantize(torch::Tensor w, torch::Tensor scales, int64_t group, int64_t in_features, bool bf16);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
torch::Tensor add_rms_norm(torch::Tensor x, torch::Tensor delta, torch::Tensor weight, double eps);
torch::Tensor silu_mul(torch::Tensor gate_up);
std::tuple<torch::Tensor, torch::Tensor> rope_qk(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin,
                                                int64_t heads, int64_t kv_heads);
torch::Tensor decode_layers(torch::Tensor h, torch::Tensor x, torch::Tensor cos, torch::Tensor sin,
                            torch::Tensor slots, torch::Tensor block_tables, torch::Tensor context_lens,
                            torch::Tensor k_cache, torch::Tensor v_cache, std::vector<torch::Tensor> norms,
                            std::vector<torch::Tensor> weights, std::vector<torch::Tensor> scales,
                            std::vector<int64_t> groups, std::vector<int64_t> formats,
                            std::vector<torch::Tensor> biases, int64_t heads, int64_t kv_heads, double eps);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lora_add", &lora_add, "out_j += (x @ A_j[entry]^T) @ B_j[entry] per row group, for each module j of a fused projection");
  m.def("small_linear", &small_linear, "x @ w^T for 1-4 rows of x, reading w once (decode of a few sequences)");
  m.def("quant_linear", &quant_linear, "x @ W^T for W in bf16, int8 (per-row scales) or int4 (per-group)");
  m.def("dequantize", &dequantize, "W of quant_linear in fp32 or bf16 (for compute-bound batches)");
  m.def("rms_norm", &rms_norm, "RMSNorm in one pass, rounding like transformers' Llama");
  m.def("add_rms_norm", &add_rms_norm, "x += delta in place, then RMSNorm of x (the fused residual add)");
  m.def("silu_mul", &silu_mul, "silu(gate) * up of a fused [gate | up], rounding like transformers' Llama");
  m.def("rope_qk", &rope_qk, "q and k of a fused qkv projection, rotated (rotate-half RoPE)");
  m.def("kv_write", &kv_write, "store new tokens' K (transposed blocks) and V at flat slot ids of one layer");
  m.def("argmax_rows", &argmax_rows, "first index of each row's maximum, like torch.argmax(-1)");
  m.def("decode_attention", &decode_attention, "one-token attention over the paged KV cache, in place");
  m.def("decode_layers", &decode_layers, "a decode step of a few rows through every decoder layer, no LoRA");
}
