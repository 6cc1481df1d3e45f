"""Adapter merging per request (LoRAX's feature): a weighted combination of known adapters, computed once,
written as a PEFT adapter folder and registered under a deterministic name, so that it loads, stays resident
and is evicted like any other adapter, and the next request naming the same merge is a cache hit.

Methods, per (layer, module), with each source's own scale s_i = alpha_i / r_i folded in:
- `linear`: delta = sum_i w_i s_i B_i A_i, kept exact in LoRA form by concatenating along the rank:
  A = [A_1; A_2; ...], B = [w_1 s_1 B_1, w_2 s_2 B_2, ...] (rank r_1 + r_2 + ...; PEFT's "cat").
- `ties`: TIES-merging (Yadav et al., 2023; PEFT's `merge_utils.ties`) of the dense deltas s_i B_i A_i:
  keep each delta's `density` largest entries, elect a sign per entry, average the agreeing weighted entries.
  The result is no longer low-rank, so it is re-factorised by a truncated SVD to rank r_1 + r_2 + ... (the
  rank the linear merge would have; capped by the server's --max-adapter-rank): B = U S, A = V^T. That is the
  best approximation of that rank (Eckart-Young); the merge is exact where the TIES delta has no more rank.

Every resident adapter is padded to the largest rank (lora/weights.py), so a merge of many high-rank adapters
makes every adapter cost more: the rank cap bounds it.
"""

import hashlib
import json
import shutil
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from loraforge.errors import LoraforgeError
from loraforge.serve.lora.adapter_file import read_adapter
from loraforge.serve.lora.manager import AdapterManager, AdapterRef
from loraforge.serve.model.projections import PROJECTIONS

MAX_MERGES = 64  # merged adapters kept registered; the least recently used one beyond is dropped


class MergeError(LoraforgeError):
    """A merge that cannot be computed as asked (the rank would pass the server's limit)."""


@dataclass(frozen=True)
class MergeSpec:
    adapters: tuple[tuple[str, float], ...]  # (name, weight), sorted by name
    method: str = "linear"
    density: float = 1.0
    majority_sign_method: str = "total"


Modules = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]]


def merge_modules(sources: list[tuple[Modules, float]], spec: MergeSpec, max_rank: int) -> Modules:
    """(layer, module) -> (A [r, in], B [out, r], scale 1.0) of the merge of `sources` ((modules, weight))."""
    out: Modules = {}
    for key in sorted({k for modules, _ in sources for k in modules}):
        parts = [(m[key][0].float(), m[key][1].float() * m[key][2], w) for m, w in sources if key in m]
        rank = sum(a.shape[0] for a, _, _ in parts)
        if rank > max_rank:
            raise MergeError(f"the merge has rank {rank} in {key[1]}; this server's limit is {max_rank}")
        if spec.method == "linear":
            a = torch.cat([a for a, _, _ in parts])
            b = torch.cat([b * w for _, b, w in parts], dim=1)
        else:
            with warnings.catch_warnings():  # PEFT warns that density 1 prunes nothing: that is asked for
                warnings.simplefilter("ignore")
                from peft.utils.merge_utils import ties

                delta = ties(
                    [b @ a for a, b, _ in parts],
                    torch.tensor([w for _, _, w in parts]),
                    spec.density,
                    spec.majority_sign_method,
                )
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            rank = min(rank, s.shape[0])
            a, b = vh[:rank].contiguous(), (u[:, :rank] * s[:rank]).contiguous()
        if not (a.isfinite().all() and b.isfinite().all()):
            raise MergeError(f"the merge overflows in {key[1]} of layer {key[0]} (weights too large?)")
        out[key] = (a, b, 1.0)
    return out


def write_peft(modules: Modules, folder: Path, base_model: str) -> None:
    """A PEFT LoRA folder (lora_alpha 1, each module's rank in `rank_pattern`; B carries r so that PEFT's and
    the engine's scale alpha / r gives back 1)."""
    parent = {m: p.parent for p in PROJECTIONS.values() for m, _ in p.parts}
    tensors, ranks = {}, {}
    for (layer, module), (a, b, _) in modules.items():
        path = f"base_model.model.model.layers.{layer}.{parent[module]}.{module}"
        tensors[f"{path}.lora_A.weight"] = a.contiguous()
        tensors[f"{path}.lora_B.weight"] = (b * a.shape[0]).contiguous()
        ranks[f"model.layers.{layer}.{parent[module]}.{module}"] = a.shape[0]
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base_model,
        "r": max(ranks.values()),
        "lora_alpha": 1,
        "rank_pattern": ranks,
        "target_modules": sorted({m for _, m in modules}),
        "lora_dropout": 0.0,
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1))


class AdapterMerger:
    """Computes merges on the calling thread (the API's thread pool: never the engine's) and registers each
    with the adapter manager under `merge_name`; one merge at a time, so concurrent requests for the same
    merge compute it once."""

    def __init__(self, manager: AdapterManager, base_model: str):
        self.manager, self.base_model = manager, base_model
        self._dir: tempfile.TemporaryDirectory | None = None
        self._lock = threading.Lock()
        self.merges: OrderedDict[str, Path] = OrderedDict()  # least recently used first

    def name(self, spec: MergeSpec) -> str:
        """Deterministic: the method, its settings, the weights and each source's file (path, size, mtime),
        so a replaced source adapter gives a new name instead of a stale cache hit."""
        sources = []
        for adapter, weight in spec.adapters:
            folder = self.manager.locate(adapter)  # raises ModelNotFoundError for an unknown name
            stat = (folder / "adapter_model.safetensors").stat() if folder is not None else None
            sources.append([adapter, repr(weight), str(folder), stat and [stat.st_size, stat.st_mtime_ns]])
        key = json.dumps([spec.method, repr(spec.density), spec.majority_sign_method, sources])
        return f"merge-{spec.method}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def ensure(self, spec: MergeSpec) -> AdapterRef:
        """The merged adapter of `spec`, computed and registered unless it already is."""
        with self._lock:
            name = self.name(spec)
            if name in self.merges:
                self.merges.move_to_end(name)
                return AdapterRef(name, False)
            w = self.manager.weights
            sources = []
            for adapter, weight in spec.adapters:
                path = self.manager.locate(adapter) or self.manager.hub.fetch(adapter)
                loaded = read_adapter(adapter, path, self.manager.dims, w.num_layers, torch.float32)
                sources.append((loaded.modules, weight))
            modules = merge_modules(sources, spec, self.manager.limits.max_adapter_rank)
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="loraforge-merges-")
            folder = Path(self._dir.name) / name
            write_peft(modules, folder, self.base_model)
            self.manager.register(name, folder)
            self.merges[name] = folder
            self._forget_old()
            return AdapterRef(name, False)  # a client-chosen name (metrics label it like a hub id)

    def _forget_old(self) -> None:
        for name in list(self.merges)[: max(0, len(self.merges) - MAX_MERGES)]:
            if self.manager.unload(name):  # False while requests use it: kept until a later merge
                shutil.rmtree(self.merges.pop(name), ignore_errors=True)
