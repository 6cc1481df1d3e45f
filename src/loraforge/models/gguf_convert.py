"""Convert a GGUF checkpoint once into an HF safetensors directory, so later loads skip dequantisation."""

import json
import shutil
import tempfile
from pathlib import Path

from loraforge.errors import ModelNotFoundError

MARKER = "loraforge-source.json"


def _fingerprint(gguf_path: Path) -> dict:
    stat = gguf_path.stat()
    return {"gguf": str(gguf_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_converted(target: Path, gguf_path: Path) -> bool:
    marker = target / MARKER
    return marker.exists() and json.loads(marker.read_text()) == _fingerprint(gguf_path)


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantise `gguf_path` to fp32 safetensors plus tokenizer files in `target` (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {gguf_path}")
    if is_converted(target, gguf_path):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The weights are now plain dense tensors; keeping the GGUF quantization_config would make
        # transformers try to re-read the GGUF on every load.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = gguf_path.stem
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / MARKER).write_text(json.dumps(_fingerprint(gguf_path)))
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target
