"""Layout: examples as prior user/assistant turns after the system prompt; completions as worked examples."""

from loraforge.fewshot import FewShotExample, fewshot_messages, fewshot_prompt

NEAR = FewShotExample.of([{"role": "system", "content": "old"}, {"role": "user", "content": "q1"}], "a1")
FAR = FewShotExample.of([{"role": "user", "content": "q2"}], "a2")


def test_examples_become_prior_turns_after_the_system_prompt_most_similar_last():
    request = [{"role": "system", "content": "Classify."}, {"role": "user", "content": "q"}]
    assert fewshot_messages(request, [NEAR, FAR]) == [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "q1"},  # the example's own system prompt is dropped
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q"},
    ]
    assert request == [{"role": "system", "content": "Classify."}, {"role": "user", "content": "q"}]


def test_without_a_system_prompt_or_examples():
    request = [{"role": "user", "content": "q"}]
    assert fewshot_messages(request, [FAR]) == [
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "q"},
    ]
    assert fewshot_messages(request, []) == request


def test_completions_prompt_lists_worked_examples_before_the_prompt():
    shots = [FewShotExample.of([{"role": "user", "content": "Text: b\nLabel:"}], " y")]
    shots.insert(0, FewShotExample.of([{"role": "user", "content": "Text: a\nLabel:"}], " x"))
    assert (
        fewshot_prompt("Text: c\nLabel:", shots)
        == "Text: b\nLabel: y\n\nText: a\nLabel: x\n\nText: c\nLabel:"
    )
    assert fewshot_prompt("p", []) == "p"
