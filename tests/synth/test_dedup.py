"""Dedup: normalization, exact Jaccard values, and MinHash LSH finding the same pairs as brute force."""

import json
from pathlib import Path

import pytest

from loraforge.synth.dedup import DedupIndex, jaccard, lsh_bands, normalize, shingles


def test_normalize_ignores_case_punctuation_and_spacing():
    assert normalize("  Where's   my CARD?!\n") == "where s my card"
    assert normalize("Ｃａｆé") == "café"  # NFKC folds full-width letters


def test_shingles_and_jaccard_exact_values():
    assert shingles("abcdef") == {"abcd", "bcde", "cdef"}
    assert shingles("ab") == {"ab"}
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 1.0


def test_lsh_bands_keep_recall_at_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_bands(threshold)
        assert bands * rows <= 128
        assert 1 - (1 - threshold**rows) ** bands >= 0.999


def test_index_reports_exact_near_and_source():
    index = DedupIndex(0.8)
    index.add("Where is my new card? It has been ten days.", "seed")
    assert index.find("where is my new card it has been TEN days").kind == "exact"
    near = index.find("Where is my new card? It has been ten days now.")
    assert (near.kind, near.source) == ("near", "seed") and 0.8 <= near.similarity < 1
    assert index.find("How do I change my PIN at an ATM?") is None


def test_check_and_add_only_adds_new_texts():
    index = DedupIndex(0.8)
    assert index.check_and_add("first text here", "generated") is None
    assert index.check_and_add("First text here!", "generated").kind == "exact"
    assert len(index) == 1


def test_threshold_one_means_exact_only():
    index = DedupIndex(1.0)
    index.add("Where is my new card? It has been ten days.", "x")
    assert index.find("Where is my new card? It has been ten days now.") is None


def test_lsh_finds_the_same_near_duplicates_as_brute_force():
    lines = (Path(__file__).parent / "data" / "banking77_sample.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    # Add edited copies so there are true near-duplicates at several similarities.
    texts += [t + " please" for t in texts[:40]] + [t.replace("my", "the") for t in texts[40:80]]
    threshold = 0.7
    index, grams_seen = DedupIndex(threshold), []
    brute_found = 0
    for text in texts:
        grams = shingles(normalize(text))
        brute = any(jaccard(grams, g) >= threshold for g in grams_seen)
        match = index.find(text)
        assert (match is not None) == brute, text
        brute_found += brute
        if not brute:
            index.add(text, "generated")
            grams_seen.append(grams)
    assert brute_found >= 40  # the edited copies are mostly near-duplicates, so the check is not vacuous
