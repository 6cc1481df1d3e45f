import pytest

from loraforge.inference.hf import GenerationModel
from loraforge.models import load_causal_lm, load_tokenizer, resolve_model
from loraforge.serve.engine.constraints import ChoiceConstraint

LABELS = ["card_arrival", "card_linking", "exchange_rate", "transfer_failed"]


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    return GenerationModel(load_causal_lm(resolved), load_tokenizer(resolved))


def test_the_label_constraint_walks_token_paths(generator):
    tokenizer = generator.tokenizer
    constraint = ChoiceConstraint.from_strings(LABELS, tokenizer)
    first_tokens = {tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in LABELS}
    assert constraint.allowed([]) == sorted(first_tokens)
    full = tokenizer("exchange_rate", add_special_tokens=False)["input_ids"]
    assert constraint.allowed(full) == [tokenizer.eos_token_id]
    assert constraint.allowed([10_000]) == [tokenizer.eos_token_id]  # off the tree: stop


def test_batched_generation_matches_one_by_one(generator):
    prompts = [
        generator.chat_prompt([{"role": "user", "content": text}]) for text in ["hi", "where is my card now?"]
    ]
    batched = generator.generate(prompts, max_new_tokens=8, batch_size=2)
    single = [generator.generate([p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single


def test_constrained_decoding_only_produces_labels(generator):
    prompts = [generator.chat_prompt([{"role": "user", "content": f"message {i}"}]) for i in range(6)]
    free = generator.generate(prompts, max_new_tokens=12)
    constrained = generator.generate(prompts, max_new_tokens=12, allowed_outputs=LABELS)
    assert all(output in LABELS for output in constrained)
    assert not all(output in LABELS for output in free)  # a random model left alone does not spell labels


def test_the_lm_head_gets_a_contiguous_input_and_the_same_outputs(tiny_model_dir, generator):
    """generate() hands the LM head a strided view of the last position; with frozen weights (any PEFT model)
    torch's CPU linear then copies the weight once per row. The generator makes that input contiguous."""
    resolved = resolve_model(str(tiny_model_dir))
    model = load_causal_lm(resolved)
    model.requires_grad_(False)  # frozen, as under PEFT
    seen = []
    frozen = GenerationModel(model, generator.tokenizer)
    GenerationModel(model, generator.tokenizer)  # a second wrapper adds no second hook
    assert len(model.get_output_embeddings()._forward_pre_hooks) == 1
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0]))
    prompts = [generator.chat_prompt([{"role": "user", "content": t}]) for t in ["hi", "where is my card?"]]
    assert frozen.generate(prompts, max_new_tokens=4) == generator.generate(prompts, max_new_tokens=4)
    assert seen and all(x.is_contiguous() for x in seen)
