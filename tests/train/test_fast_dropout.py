import pytest
import torch
from torch import nn

from loraforge.train.fast_dropout import FastDropout, use_fast_dropout


def test_drops_at_the_requested_rate_and_keeps_the_expectation():
    torch.manual_seed(0)
    dropout = FastDropout(0.1).train()
    out = dropout(torch.ones(2000, 1000))
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002
    assert abs(out.mean().item() - 1.0) < 0.005
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.9), rtol=1e-4)


def test_every_quarter_of_a_random_word_is_used_evenly():
    # Elements 4k+3 come from the top 16 bits of a word, whose sign bit is always 0: they must still drop
    # at the same rate as the others.
    torch.manual_seed(1)
    out = FastDropout(0.5).train()(torch.ones(400_000))
    rates = [(out[i::4] == 0).float().mean().item() for i in range(4)]
    assert all(abs(r - 0.5) < 0.01 for r in rates), rates


def test_eval_mode_and_zero_probability_are_the_identity():
    x = torch.randn(8, 16)
    assert FastDropout(0.3).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x


def test_gradient_flows_through_kept_elements_only():
    x = torch.ones(64, 64, requires_grad=True)
    out = FastDropout(0.25).train()(x)
    out.sum().backward()
    assert torch.equal(x.grad == 0, out.detach() == 0)


def test_swaps_the_dropouts_of_a_peft_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))
    swapped = use_fast_dropout(model)
    assert swapped == 2 * base.config.num_hidden_layers
    assert not any(type(m) is nn.Dropout for m in model.modules() if m is not None and hasattr(m, "p"))


def test_rejects_a_probability_of_one():
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.0)
