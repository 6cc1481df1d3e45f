"""`guided_choice_classifier: "nearest"`: an adapter with a label index answers a `guided_choice` with the
label of the nearest training row, as `evaluation.classifier: nearest` scores it; 400s where it cannot."""

import json
import shutil

import httpx
import pytest

from loraforge.classify.label_index import INDEX_FILE, LabelIndex
from loraforge.evaluate.engine_backend import EngineBackend
from tests.serve.api.test_errors import ADMIN, AUTH, assert_error

LABELS = ["card_arrival", "lost_or_stolen_card", "refund", "oos"]
TEXTS = ["where is my card?", "someone stole my wallet", "I want my money back"]


def _chat(url: str, text: str, **body) -> httpx.Response:
    body = {"model": "classifier", "messages": [{"role": "user", "content": text}], "max_tokens": 20} | body
    return httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)


@pytest.fixture(scope="module")
def classifier(live, tiny_model_dir, many_adapters_dir, tmp_path_factory):
    """Adapter `classifier` (ad03's weights) with an index of TEXTS, each labelled with a label its greedy
    decoding does not give, so that every nearest answer differs from the decoded one. Returns the labels."""
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
    messages = [[{"role": "user", "content": text}] for text in TEXTS]
    prompts = [
        backend.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages
    ]
    LabelIndex.build(backend.answer_states(prompts, "classifier"), labels, LABELS).save(folder)
    r = httpx.post(live.url + "/v1/adapters", json={"name": "classifier", "path": str(folder)}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return labels


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


def test_the_fallback_still_judges_the_decoded_labels_probability(live, classifier):
    extra = {"guided_choice": LABELS, "guided_choice_classifier": "nearest", "temperature": 0}
    low = _chat(live.url, TEXTS[1], guided_choice_fallback={"label": "oos", "threshold": 1e-9}, **extra)
    assert low.json()["choices"][0]["message"]["content"] == classifier[1]
    high = _chat(live.url, TEXTS[1], guided_choice_fallback={"label": "oos", "threshold": 0.999}, **extra)
    assert high.json()["choices"][0]["message"]["content"] == "oos"


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
