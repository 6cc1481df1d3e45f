"""Reading one PEFT LoRA adapter folder (safetensors only, never pickles) and checking it against the base
model's shapes."""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraforge.errors import LoraforgeError, ModelNotFoundError
from loraforge.serve.model.projections import MODULE_TO_PROJECTION, PROJECTIONS, module_shape

_PARENTS = "|".join(sorted({p.parent for p in PROJECTIONS.values()}))
LORA_KEY = re.compile(rf"layers\.(\d+)\.(?:{_PARENTS})\.(\w+)\.lora_([AB])\.weight$")


class AdapterError(LoraforgeError):
    """An adapter is malformed or does not fit the base model."""


@dataclass
class LoadedAdapter:
    name: str
    rank: int
    nbytes: int  # resident size in the engine's dtype
    # (layer, module) -> (lora_A [r, in], lora_B [out, r], scale), as stored in the file
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]]

    def deltas(self) -> dict[tuple[int, str], torch.Tensor]:
        """(layer, module) -> the change to that module's weight, scale * B @ A `[out, in]`, in fp32: what
        merging the adapter into the base adds (`EngineConfig.merged_adapter`)."""
        return {key: scale * (b.float() @ a.float()) for key, (a, b, scale) in self.modules.items()}


def read_adapter(
    name: str,
    path: Path,
    dims: dict[str, int],
    num_layers: int,
    dtype: torch.dtype,
    max_rank: int | None = None,
) -> LoadedAdapter:
    """Read a PEFT LoRA folder (safetensors only) and check it against the base model's shapes.

    Tensors stay as stored: transposing, scaling and casting happen in one copy when installed.
    """
    cfg_path, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"adapter '{name}': {path} has no adapter_config.json")
    if not weights.is_file():
        raise AdapterError(f"adapter '{name}': {path} has no adapter_model.safetensors (pickles are refused)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter '{name}': peft_type {cfg.get('peft_type')} is not LoRA")
    if cfg.get("use_dora") or cfg.get("modules_to_save"):
        raise AdapterError(f"adapter '{name}': DoRA and modules_to_save are not supported by the engine")
    alpha, alpha_pattern = float(cfg.get("lora_alpha", 8)), cfg.get("alpha_pattern") or {}
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    paths: dict[tuple[int, str], str] = {}
    for key, tensor in load_file(str(weights)).items():
        m = LORA_KEY.search(key)
        if m is None or m.group(2) not in MODULE_TO_PROJECTION or int(m.group(1)) >= num_layers:
            raise AdapterError(
                f"adapter '{name}': unsupported tensor '{key}' (only LoRA on attention/MLP linears)"
            )
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = tensor
        paths[(int(m.group(1)), m.group(2))] = key.split(".lora_")[0]
    modules, rank, nbytes = {}, 0, 0
    itemsize = torch.empty((), dtype=dtype).element_size()
    for (layer, module), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"adapter '{name}': layer {layer} {module} lacks lora_A or lora_B")
        a, b = ab["A"], ab["B"]
        r = a.shape[0]
        if max_rank is not None and r > max_rank:
            # Every resident adapter is padded to the largest rank, so one huge rank costs every adapter.
            raise AdapterError(
                f"adapter '{name}': LoRA rank {r} is over this server's limit of {max_rank} "
                "(--max-adapter-rank)"
            )
        din, dout = module_shape(module, dims)
        if a.shape != (r, din) or b.shape != (dout, r):
            raise AdapterError(
                f"adapter '{name}': {module} of layer {layer} has shapes {tuple(a.shape)}/{tuple(b.shape)}, "
                f"the base model needs ({r}, {din})/({dout}, {r}) — was it trained on another base model?"
            )
        full = paths[(layer, module)]
        mod_alpha = next(
            (v for k, v in alpha_pattern.items() if re.search(rf"(^|\.){re.escape(k)}$", full)), alpha
        )
        scale = float(mod_alpha) / (math.sqrt(r) if cfg.get("use_rslora") else r)
        modules[(layer, module)] = (a, b, scale)
        rank, nbytes = max(rank, r), nbytes + r * (din + dout) * itemsize
    if not modules:
        raise AdapterError(f"adapter '{name}': no LoRA weights found")
    return LoadedAdapter(name, rank, nbytes, modules)
