"""Adapter merging: the linear merge is exact (against the sources' deltas), TIES is PEFT's TIES of the dense
deltas re-factorised by the optimal truncated SVD, the written folder loads in PEFT and in the engine alike,
and a merge is computed once per spec."""

import pytest
import torch

from loraforge.errors import ModelNotFoundError
from loraforge.serve.engine import Engine, EngineConfig, SamplingParams
from loraforge.serve.lora.adapter_file import read_adapter
from loraforge.serve.lora.merge import AdapterMerger, MergeError, MergeSpec, merge_modules, write_peft
from tests.serve.conftest import hf_greedy


@pytest.fixture(scope="module")
def engine(tiny_model_dir, adapter_dir):
    return Engine(EngineConfig(model=str(tiny_model_dir), precision="fp32", adapter_dir=adapter_dir))


def _read(engine, path, name="x"):
    return read_adapter(name, path, engine.lora.dims, engine.lora.num_layers, torch.float32).modules


def _delta(module) -> torch.Tensor:
    a, b, scale = module
    return scale * b.float() @ a.float()


def _sources(engine, adapter_dir, weights: dict[str, float]):
    return [(_read(engine, adapter_dir / name), w) for name, w in weights.items()]


def test_linear_merge_is_exact_across_ranks_and_targets(engine, adapter_dir, tmp_path):
    weights = {"alpha": 0.7, "beta": 0.5, "gamma": -0.4}  # ranks 8, 4, 16; gamma only on q/v
    sources = _sources(engine, adapter_dir, weights)
    merged = merge_modules(sources, MergeSpec(tuple(weights.items())), max_rank=256)
    write_peft(merged, tmp_path / "m", "tiny")
    written = _read(engine, tmp_path / "m")
    keys = {k for modules, _ in sources for k in modules}
    assert set(written) == keys
    for key in keys:
        expected = sum(w * _delta(m[key]) for m, w in sources if key in m)
        torch.testing.assert_close(_delta(written[key]), expected, rtol=1e-5, atol=1e-6)
        assert written[key][0].shape[0] == sum(m[key][0].shape[0] for m, _ in sources if key in m)


def test_ties_is_peft_ties_of_the_deltas_truncated_optimally(engine, adapter_dir):
    from peft.utils.merge_utils import ties

    weights = {"alpha": 1.0, "beta": 0.6}
    sources = _sources(engine, adapter_dir, weights)
    spec = MergeSpec(tuple(weights.items()), "ties", density=0.2)
    merged = merge_modules(sources, spec, max_rank=256)
    for key, module in merged.items():
        ref = ties([_delta(m[key]) for m, _ in sources], torch.tensor([w for _, w in sources]), 0.2)
        rank = module[0].shape[0]
        assert rank == min(12, *ref.shape)
        dropped = torch.linalg.svdvals(ref)[rank:]
        err = torch.linalg.matrix_norm(ref - _delta(module))
        assert float(err) == pytest.approx(float(dropped.norm()), rel=1e-3, abs=1e-5)
    # One adapter, full density, weight 1: TIES changes nothing, and its rank holds the whole delta.
    one = merge_modules(sources[:1], MergeSpec((("alpha", 1.0),), "ties"), max_rank=256)
    for key, module in one.items():
        torch.testing.assert_close(_delta(module), _delta(sources[0][0][key]), rtol=1e-4, atol=1e-5)


def test_merged_adapter_runs_in_the_engine_as_in_peft(engine, adapter_dir, tiny_model_dir):
    merger = AdapterMerger(engine.adapters, engine.model_name)
    ref = merger.ensure(MergeSpec((("alpha", 0.5), ("gamma", 0.5))))
    prompt = engine.tokenizer("The quick brown fox").input_ids
    seq = engine.generate([prompt], SamplingParams(max_tokens=10, temperature=0), [ref.name])[0]
    expected = hf_greedy(tiny_model_dir, [prompt], [merger.merges[ref.name]], 10)[0]
    assert seq.output_ids == expected
    plain = engine.generate([prompt], SamplingParams(max_tokens=10, temperature=0), ["alpha"])[0]
    assert plain.output_ids != seq.output_ids


def test_a_merge_is_computed_once_and_named_deterministically(engine, monkeypatch):
    import loraforge.serve.lora.merge as merge

    calls = []
    real = merge.merge_modules
    monkeypatch.setattr(merge, "merge_modules", lambda *a: calls.append(1) or real(*a))
    merger = AdapterMerger(engine.adapters, engine.model_name)
    spec = MergeSpec((("alpha", 0.5), ("beta", 0.5)), "ties", density=0.3)
    first, second = merger.ensure(spec), merger.ensure(spec)
    assert first == second and len(calls) == 1 and first.name.startswith("merge-ties-")
    other = merger.name(MergeSpec((("alpha", 0.5), ("beta", 0.25)), "ties", density=0.3))
    assert other != first.name and merger.name(spec) == first.name
    with pytest.raises(ModelNotFoundError):
        merger.ensure(MergeSpec((("alpha", 1.0), ("no-such", 1.0))))


def test_a_merge_over_the_rank_limit_is_refused(engine, adapter_dir):
    sources = _sources(engine, adapter_dir, {"alpha": 1.0, "gamma": 1.0})  # 8 + 16 on q/v
    with pytest.raises(MergeError, match="rank 24"):
        merge_modules(sources, MergeSpec((("alpha", 1.0), ("gamma", 1.0))), max_rank=20)
