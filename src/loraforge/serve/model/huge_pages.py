"""Weights in transparent huge pages (2 MiB) on Linux CPUs.

A decode step of a few sequences streams every weight from memory once. In 4 KiB pages that is a TLB miss
every 4 KiB, and the hardware prefetchers stop at each page's end; in 2 MiB pages the same kernels read
~15-20% faster (`benchmarks/vs_llamacpp.py`, row 1; llama.cpp reads its weights from 4 KiB pages of the
page cache). Linux backs a region with huge pages when asked (`madvise(MADV_HUGEPAGE)`) before its first
write, where transparent huge pages are enabled ("always" or "madvise", the usual defaults). Elsewhere, or
if the kernel refuses, the tensors stay where they are: only the speed differs.
"""

import ctypes
import ctypes.util
import os
import sys
from functools import cache

import torch

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14  # linux/mman.h
MADV_POPULATE_WRITE = 23  # linux/mman.h, Linux 5.14+
ALIGN = 64  # each tensor starts on a cache line
MAX_SHARE = 0.25  # of the machine's memory: moving copies, so the weights are held twice for a moment


@cache
def _madvise():
    """libc's madvise, or None where there is none to call (not Linux, no libc found)."""
    if sys.platform != "linux":
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    fn = ctypes.CDLL(name, use_errno=True).madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn


def huge_page_arena(nbytes: int) -> torch.Tensor | None:
    """`nbytes` of CPU memory (uint8) backed by huge pages once written, or None where they cannot be had."""
    madvise = _madvise()
    if madvise is None or nbytes == 0:
        return None
    span = -(-nbytes // HUGE_PAGE) * HUGE_PAGE  # whole huge pages
    buf = torch.empty(span + HUGE_PAGE, dtype=torch.uint8)
    start = -buf.data_ptr() % HUGE_PAGE  # the arena starts on a huge-page boundary, its span within buf
    if madvise(buf.data_ptr() + start, span, MADV_HUGEPAGE) != 0:
        return None
    return buf[start : start + nbytes]


def populate(t: torch.Tensor) -> bool:
    """Back CPU tensor `t`'s memory with pages now, as a first write would, without writing: its contents stay
    as they are, so another thread may use `t` meanwhile. A first write of a 2 MiB huge page can take tens of
    ms where a VM backs its memory lazily (Firecracker); callers do this ahead, off the critical path. False
    where the OS cannot (not Linux, or older than 5.14)."""
    madvise = _madvise()
    nbytes = t.numel() * t.element_size()
    if madvise is None or nbytes == 0:
        return False
    page = os.sysconf("SC_PAGE_SIZE")
    start = t.data_ptr() // page * page  # madvise wants a page-aligned start; the page's other bytes are kept
    return madvise(start, t.data_ptr() + nbytes - start, MADV_POPULATE_WRITE) == 0


def into_huge_pages(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of contiguous CPU `tensors` laid out one after another in one huge-page arena (same shapes,
    dtypes and values), or the tensors themselves where no arena can be had."""
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return tensors
    arena = huge_page_arena(total) if total <= MAX_SHARE * memory else None
    if arena is None:
        return tensors
    out = []
    for t, at in zip(tensors, offsets, strict=True):
        view = arena[at : at + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        out.append(view.copy_(t))
    return out
