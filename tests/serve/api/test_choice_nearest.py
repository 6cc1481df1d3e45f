"""`guided_choice_classifier: "nearest"`: an adapter with a label index answers a `guided_choice` with the
label of the nearest training row, as `evaluation.classifier: nearest` scores it; 400s where it cannot."""

import json
import shutil

import httpx
import pytest

from loraforge.classify.label_index import INDEX_FILE, LabelIndex, Neighbour
from loraforge.config.tasks import DEFAULT_FALLBACK_MARGIN, DEFAULT_FALLBACK_MIN_SIMILARITY
from loraforge.evaluate.engine_backend import EngineBackend
from tests.serve.api.test_errors import ADMIN, AUTH, assert_error

LABELS = ["card_arrival", "lost_or_stolen_card", "refund", "oos"]
TEXTS = ["where is my card?", "someone stole my wallet", "I want my money back"]
OUT_OF_SCOPE = "tell me a joke about the weather"
UNSEEN = ["when will my new card get here?", "can I get a refund", "I lost my card", "hello there"]


def _chat(url: str, text: str, **body) -> httpx.Response:
    body = {"model": "classifier", "messages": [{"role": "user", "content": text}], "max_tokens": 20} | body
    return httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)


def _content(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def classifier(live, tiny_model_dir, many_adapters_dir, tmp_path_factory):
    """Adapter `classifier` (ad03's weights) with an index of TEXTS, each labelled with a label its greedy
    decoding does not give, so that every nearest answer differs from the decoded one, and of OUT_OF_SCOPE
    labelled `oos`. Returns the labels of TEXTS."""
    folder = tmp_path_factory.mktemp("classifier") / "adapter"
    shutil.copytree(many_adapters_dir / "ad03", folder)
    decoded = [
        _chat(live.url, text, model="ad03", temperature=0, guided_choice=LABELS).json()["choices"][0][
            "message"
        ]
        for text in TEXTS
    ]
    labels = [next(label for label in LABELS if label != d["content"]) for d in decoded]
    backend = EngineBackend.load(str(tiny_model_dir), {"classifier": folder}, precision="fp32")
    messages = [[{"role": "user", "content": text}] for text in [*TEXTS, OUT_OF_SCOPE]]
    prompts = [
        backend.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages
    ]
    states = backend.answer_states(prompts, "classifier")
    LabelIndex.build(states, [*labels, "oos"], LABELS).save(folder)
    r = httpx.post(live.url + "/v1/adapters", json={"name": "classifier", "path": str(folder)}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return labels


@pytest.fixture(scope="module")
def gaps(classifier, live) -> list[float]:
    """How much more similar each of TEXTS is to its own index row than to the `oos` row."""
    index = LabelIndex.load(live.engine.adapter_folder("classifier"))
    return [1.0 - (index.states[i] @ index.states[len(TEXTS)]).item() for i in range(len(TEXTS))]


@pytest.fixture(scope="module")
def unseen(classifier, live, tiny_model_dir) -> tuple[str, Neighbour]:
    """A text outside the index whose nearest row is not the fallback's, with room either side of its
    similarity and its gap for the server's own rounding; and that row, as the server's states find it."""
    folder = live.engine.adapter_folder("classifier")
    backend = EngineBackend.load(str(tiny_model_dir), {"classifier": folder}, precision="fp32")
    index = LabelIndex.load(folder)
    for text in UNSEEN:
        messages = [{"role": "user", "content": text}]
        prompt = backend.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        neighbour = index.nearest(backend.answer_states([prompt], "classifier"), "oos")[0]
        gap = neighbour.similarity - neighbour.fallback_similarity
        if neighbour.label != "oos" and gap > 0.02 and -0.98 < neighbour.similarity < 0.98:
            return text, neighbour
    raise AssertionError("no unseen text fits")


def test_each_request_gets_the_label_of_its_nearest_training_row(live, classifier):
    for text, label in zip(TEXTS, classifier, strict=True):
        for temperature in (0, 1):  # the answer is the index's, however the label is decoded
            r = _chat(
                live.url,
                text,
                temperature=temperature,
                guided_choice=LABELS,
                guided_choice_classifier="nearest",
            )
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            assert choice["message"]["content"] == label and choice["finish_reason"] == "stop"
    n2 = httpx.post(
        live.url + "/v1/completions",
        json={"model": "classifier", "prompt": "Label:", "n": 2, "max_tokens": 20, "guided_choice": LABELS}
        | {"guided_choice_classifier": "nearest"},
        headers=AUTH,
        timeout=60,
    )
    assert {c["text"] for c in n2.json()["choices"]} <= set(classifier)  # indexed labels only


def test_a_streamed_answer_sends_the_label_whole(live, classifier):
    body = {"model": "classifier", "messages": [{"role": "user", "content": TEXTS[0]}], "max_tokens": 20}
    body |= {"stream": True, "guided_choice": LABELS, "guided_choice_classifier": "nearest"}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [c["choices"][0]["delta"].get("content") for c in map(json.loads, lines) if c["choices"]]
    assert [d for d in deltas if d] == [classifier[0]]


def test_the_fallback_answers_a_request_not_clearly_nearer_another_labels_rows(live, classifier, gaps):
    """With the nearest classifier the fallback judges the margin, as `evaluation.fallback_margin` does: the
    request keeps its label only when at least `margin` (default DEFAULT_FALLBACK_MARGIN) more similar to
    its nearest row than to the fallback label's; at any temperature (the state comes from the prompt)."""
    extra = {"guided_choice": LABELS, "guided_choice_classifier": "nearest", "temperature": 1}
    for text, label, gap in zip(TEXTS, classifier, gaps, strict=True):
        assert 0.02 < gap < 1.98, gap  # room either side for the server's own rounding
        below = _chat(live.url, text, guided_choice_fallback={"label": "oos", "margin": gap - 0.01}, **extra)
        assert _content(below) == label, below.text
        above = _chat(live.url, text, guided_choice_fallback={"label": "oos", "margin": gap + 0.01}, **extra)
        assert _content(above) == "oos"
        default = _chat(live.url, text, guided_choice_fallback={"label": "oos"}, **extra)
        expected = label if gap >= DEFAULT_FALLBACK_MARGIN + 0.01 else "oos"
        if abs(gap - DEFAULT_FALLBACK_MARGIN) > 0.01:
            assert _content(default) == expected
    unrelated = _chat(live.url, OUT_OF_SCOPE, guided_choice_fallback={"label": "oos", "margin": 0}, **extra)
    assert _content(unrelated) == "oos"  # its nearest row is the fallback's own


def test_the_fallback_answers_a_request_unlike_every_training_row(live, classifier, unseen):
    """A request less similar than `min_similarity` to its nearest row is the fallback's, as
    `evaluation.fallback_min_similarity` rules, whatever the margin."""
    text, neighbour = unseen
    extra = {"guided_choice": LABELS, "guided_choice_classifier": "nearest", "temperature": 1}
    for floor, expected in (
        (neighbour.similarity - 0.01, neighbour.label),
        (neighbour.similarity + 0.01, "oos"),
    ):
        rule = {"label": "oos", "margin": 0, "min_similarity": floor}
        assert _content(_chat(live.url, text, guided_choice_fallback=rule, **extra)) == expected
    default = _chat(live.url, text, guided_choice_fallback={"label": "oos"}, **extra)
    gap = neighbour.similarity - neighbour.fallback_similarity
    if (
        min(abs(gap - DEFAULT_FALLBACK_MARGIN), abs(neighbour.similarity - DEFAULT_FALLBACK_MIN_SIMILARITY))
        > 0.01
    ):
        kept = gap >= DEFAULT_FALLBACK_MARGIN and neighbour.similarity >= DEFAULT_FALLBACK_MIN_SIMILARITY
        assert _content(default) == (neighbour.label if kept else "oos")


def test_a_threshold_given_also_judges_the_decoded_labels_probability(live, classifier):
    extra = {"guided_choice": LABELS, "guided_choice_classifier": "nearest", "temperature": 0}
    kept = {"label": "oos", "threshold": 1e-9, "margin": 0}
    assert _content(_chat(live.url, TEXTS[1], guided_choice_fallback=kept, **extra)) == classifier[1]
    low = {"label": "oos", "threshold": 0.999, "margin": 0}
    high = _chat(live.url, TEXTS[1], guided_choice_fallback=low, **extra)
    assert _content(high) == "oos"
    hot = _chat(live.url, TEXTS[1], guided_choice_fallback=low, **(extra | {"temperature": 1}))
    assert "temperature 0" in assert_error(hot, 400, "guided_choice_fallback")["message"]


def test_a_fallback_the_index_cannot_judge_is_a_400(live, classifier):
    body = {"guided_choice": LABELS, "temperature": 0}
    nearest = body | {"guided_choice_classifier": "nearest"}
    no_rows = _chat(live.url, TEXTS[0], guided_choice_fallback={"label": "refund"}, **nearest)
    assert (
        "no training rows of the fallback label 'refund'"
        in assert_error(no_rows, 400, "guided_choice_fallback")["message"]
    )
    decoded = _chat(live.url, TEXTS[0], guided_choice_fallback={"label": "oos", "margin": 0.1}, **body)
    assert (
        "margin needs guided_choice_classifier 'nearest'"
        in assert_error(decoded, 400, "guided_choice_fallback")["message"]
    )
    floor = {"label": "oos", "min_similarity": 0.5}
    decoded = _chat(live.url, TEXTS[0], guided_choice_fallback=floor, **body)
    assert (
        "min_similarity needs guided_choice_classifier 'nearest'"
        in assert_error(decoded, 400, "guided_choice_fallback")["message"]
    )
    assert _chat(live.url, TEXTS[0], **body).status_code == 200


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"guided_choice_classifier": "nearest"}, "needs guided_choice"),
        (
            {"model": "ad04", "guided_choice": LABELS, "guided_choice_classifier": "nearest"},
            "has no label index",
        ),
        (
            {"model": "base", "guided_choice": LABELS, "guided_choice_classifier": "nearest"},
            "has no label index",
        ),
        ({"guided_choice": LABELS[1:], "guided_choice_classifier": "nearest"}, "outside guided_choice"),
    ],
)
def test_what_cannot_be_answered_by_nearest_label_is_a_400(live, classifier, body, words):
    if body.get("model") == "base":
        body["model"] = live.engine.model_name
    err = assert_error(_chat(live.url, "hi", **body), 400, "guided_choice_classifier")
    assert words in err["message"]
    r = _chat(live.url, "hi", guided_choice=LABELS, guided_choice_classifier="closest")
    assert r.status_code == 400


def test_an_unusable_index_file_is_a_400_that_says_why(live, many_adapters_dir, tmp_path):
    """A file that is not an index, and an index of another base model (other state size): 400s naming the
    field, and the server goes on answering."""
    import torch

    for name, write, words in (
        ("broken", lambda f: (f / INDEX_FILE).write_bytes(b"not safetensors"), "not a readable label index"),
        (
            "foreign",
            lambda f: LabelIndex.build(torch.randn(2, 576), LABELS[:2], LABELS).save(f),
            "576-dimensional states",
        ),
    ):
        folder = tmp_path / name
        shutil.copytree(many_adapters_dir / "ad05", folder)
        write(folder)
        r = httpx.post(live.url + "/v1/adapters", json={"name": name, "path": str(folder)}, headers=ADMIN)
        assert r.status_code == 200, r.text
        err = assert_error(
            _chat(live.url, "hi", model=name, guided_choice=LABELS, guided_choice_classifier="nearest"),
            400,
            "guided_choice_classifier",
        )
        assert words in err["message"]
    assert _chat(live.url, "hi", model="ad05", max_tokens=2).status_code == 200
