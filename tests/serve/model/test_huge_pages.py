"""Weights moved into a huge-page arena keep their shapes, dtypes and values; where the kernel refuses, there
is no madvise, or a copy would not fit in memory, they stay where they were."""

import ctypes
import ctypes.util
import mmap
import os
import platform
import sys
from pathlib import Path

import pytest
import torch

from loraforge.serve.model import huge_pages
from loraforge.serve.model.huge_pages import HUGE_PAGE, into_huge_pages, populate
from loraforge.serve.model.llama import Llama
from tests.serve.model.test_llama_module import _last_hidden

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(1024, 1100, generator=g).bfloat16(),  # past one huge page in all
        torch.randint(-128, 127, (1536, 577), generator=g, dtype=torch.int8),
        torch.empty(0),
        torch.randn(3, generator=g),
    ]


def test_moved_tensors_are_equal_copies_in_one_aligned_arena():
    if sys.platform != "linux" or "[never]" in (THP.read_text() if THP.exists() else "[never]"):
        pytest.skip("transparent huge pages are off on this machine: nothing is moved")
    before = _tensors()
    after = into_huge_pages(before)
    for old, new in zip(before, after, strict=True):
        assert new.dtype == old.dtype and new.shape == old.shape and torch.equal(new, old)
        assert new.data_ptr() % 64 == 0
    assert after[0].data_ptr() % HUGE_PAGE == 0 and after[0].data_ptr() != before[0].data_ptr()
    storage = after[0].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == storage for t in after)  # one arena


def test_refused_madvise_leaves_the_tensors(monkeypatch):
    monkeypatch.setattr(huge_pages, "_madvise", lambda: lambda address, length, advice: -1)
    before = _tensors()
    assert all(a is b for a, b in zip(into_huge_pages(before), before, strict=True))
    monkeypatch.setattr(huge_pages, "_madvise", lambda: None)
    assert all(a is b for a, b in zip(into_huge_pages(before), before, strict=True))


def test_weights_too_large_to_copy_stay(monkeypatch):
    monkeypatch.setattr(huge_pages, "MAX_SHARE", 0.0)  # a copy would not fit beside them
    before = _tensors()
    assert all(a is b for a, b in zip(into_huge_pages(before), before, strict=True))


def _resident_pages(t: torch.Tensor) -> int:
    """How many of `t`'s (page-aligned) pages are backed by memory, by mincore(2)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    pages = -(-t.numel() * t.element_size() // page)
    vec = (ctypes.c_ubyte * pages)()
    assert libc.mincore(ctypes.c_void_p(t.data_ptr()), ctypes.c_size_t(pages * page), vec) == 0
    return sum(v & 1 for v in vec)


def test_populate_backs_memory_without_writing_it():
    if huge_pages._madvise() is None:
        pytest.skip("no madvise here (not Linux): nothing to back")
    page = os.sysconf("SC_PAGE_SIZE")
    # Fresh anonymous memory (malloc might hand out pages already backed).
    region = mmap.mmap(-1, 64 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    t = torch.frombuffer(region, dtype=torch.uint8)
    t[: 8 * page].fill_(7)
    fresh = t[32 * page :]
    assert _resident_pages(fresh) == 0  # never written
    if not populate(fresh):
        pytest.skip(f"this kernel ({platform.release()}) has no MADV_POPULATE_WRITE (Linux 5.14+)")
    assert _resident_pages(fresh) == 32
    assert populate(t[page + 100 : 9 * page + 5])  # unaligned ends, over written and unwritten pages
    assert torch.all(t[: 8 * page] == 7) and torch.all(t[8 * page :] == 0)
    del t, fresh


@pytest.mark.parametrize("weights", ["plain", "int4"])
def test_a_loaded_model_computes_the_same_from_the_arena(tiny_model_dir, monkeypatch, weights):
    if huge_pages._madvise() is None:
        pytest.skip("no madvise here (not Linux): weights stay where they were loaded")
    moved = Llama.load(tiny_model_dir, torch.float32, weight_format=weights)
    monkeypatch.setattr(huge_pages, "_madvise", lambda: None)
    kept = Llama.load(tiny_model_dir, torch.float32, weight_format=weights)
    ids = [5, 17, 42, 3, 99]
    assert torch.equal(_last_hidden(moved, ids), _last_hidden(kept, ids))
    if weights == "plain":
        first, last = moved.layers[0].attn.qkv.weight, moved.lm_head.weight
    else:
        first, last = moved.layers[0].attn.qkv.qweight.data, moved.lm_head.qweight.scales
    assert first.untyped_storage().data_ptr() == last.untyped_storage().data_ptr()  # moved, into one arena
