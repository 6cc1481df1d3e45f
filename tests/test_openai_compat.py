"""The OpenAI-compatible surface both servers share: one bearer-key rule, one error shape, capped labels."""

from loraforge.openai_compat import CappedLabels, bearer_matches, error_body


def test_one_bearer_rule():
    assert bearer_matches("Bearer k-1", "k-1") and bearer_matches("bearer  k-1 ", "k-1")
    assert not bearer_matches("Basic k-1", "k-1") and not bearer_matches("Bearer k-2", "k-1")
    assert not bearer_matches("", "k-1") and not bearer_matches("Bearer", "k-1")
    # Starlette hands headers over decoded as latin-1: the client's UTF-8 bytes match a UTF-8 key.
    assert bearer_matches("Bearer " + "clé".encode().decode("latin-1"), "clé")
    assert not bearer_matches("Bearer \xff\xfe", "k-1")


def test_error_body_has_the_openai_shape():
    assert error_body("bad", param="x") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "x", "code": None}
    }


def test_capped_labels_share_one_value_past_the_limit_except_vouched_ones():
    label = CappedLabels(2, "other")
    assert [label(v) for v in ("a", "b", "c", "a")] == ["a", "b", "other", "a"]
    assert label("mine", always=True) == "mine" and label("d") == "other"
