"""Building the C++ CPU kernels: a compile error fails loudly, a missing toolchain is a reason, a killed build
leaves nothing that blocks the next one, and the portable build (no -march=native) works."""

import threading

import pytest
import torch

from loraforge.serve.kernels import loader as ck

TRIVIAL = "int loraforge_answer() { return 42; }\n"


@pytest.fixture
def build_root(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    if ck.toolchain_missing():
        pytest.skip(f"{ck.toolchain_missing()}: nothing to build with")
    return tmp_path / "ext"


def _source(tmp_path, text: str):
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    path = folder / "k.cpp"
    path.write_text(text)
    return path


def _build_within(seconds: float, *args, **kwargs):
    """Run ck.build in a thread; a build that waits forever fails the test instead of hanging it."""
    result: dict = {}

    def run():
        try:
            result["value"] = ck.build(*args, **kwargs)
        except BaseException as exc:  # handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the build did not finish within {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_a_compile_error_raises_with_the_compiler_output(build_root, tmp_path):
    src = _source(tmp_path, "int broken( { return; }\n")
    with pytest.raises(ck.KernelBuildError, match="building the CPU kernels"):
        _build_within(120, "loraforge_test_broken", [src], [], python_module=False)


def test_a_stale_lock_from_a_killed_build_does_not_block_the_next(build_root, tmp_path):
    src = _source(tmp_path, TRIVIAL)
    name = f"loraforge_test_stale_{ck.build_tag([], [src])}"
    (build_root / name).mkdir(parents=True)
    (build_root / name / "lock").write_text("")  # what torch leaves when its build is SIGKILLed
    library = _build_within(120, "loraforge_test_stale", [src], [], python_module=False)
    assert str(library).endswith(".so") and not (build_root / name / "lock").exists()


def test_a_build_in_progress_elsewhere_is_waited_for_with_a_bound(build_root, tmp_path):
    import fcntl

    src = _source(tmp_path, TRIVIAL)
    name = f"loraforge_test_busy_{ck.build_tag([], [src])}"
    build_root.mkdir(parents=True)
    with open(build_root / f"{name}.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process is building
        with pytest.raises(ck.KernelBuildError, match="another process"):
            _build_within(30, "loraforge_test_busy", [src], [], python_module=False, wait_s=1.0)


def test_no_compiler_is_a_reason_and_the_engine_falls_back(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert "no C++ compiler" in ck.toolchain_missing()
    ck.cpu_kernels.cache_clear()
    try:
        assert ck.cpu_kernels() is None
    finally:
        ck.cpu_kernels.cache_clear()


def test_the_target_follows_the_setting_and_the_compiler(monkeypatch):
    monkeypatch.setenv("LORAFORGE_KERNEL_MARCH", "portable")
    assert ck.march_flags() == []
    monkeypatch.setenv("LORAFORGE_KERNEL_MARCH", "haswell")
    assert ck.march_flags() == ["-march=haswell"]
    monkeypatch.delenv("LORAFORGE_KERNEL_MARCH")
    monkeypatch.setattr(
        ck, "_compiler_accepts", lambda flag: False
    )  # e.g. a compiler that does not know the CPU
    assert ck.march_flags() == []
    monkeypatch.setattr(ck, "_compiler_accepts", lambda flag: True)
    assert ck.march_flags() == ["-march=native"]
    # Each target is its own build, and a native build is tied to the CPU's flags.
    assert len({ck.build_tag(m, ck.SOURCES) for m in ([], ["-march=haswell"], ["-march=native"])}) == 3


def test_the_portable_build_gives_the_native_builds_results(kernels, monkeypatch):
    monkeypatch.setenv("LORAFORGE_KERNEL_MARCH", "portable")
    portable = ck.build("loraforge_cpu_kernels", ck.SOURCES, ck.march_flags())
    assert portable is not kernels
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 96, generator=g), torch.randn(200, 96, generator=g)
    torch.testing.assert_close(portable.small_linear(x, w), kernels.small_linear(x, w), rtol=1e-5, atol=1e-5)
    logits = torch.randn(4, 1000, generator=g)
    assert torch.equal(portable.argmax_rows(logits), kernels.argmax_rows(logits))
    # LoRA in bf16: vdpbf16ps where the CPU has it, plain fp32 loops in the portable build
    x = torch.randn(5, 96, generator=g).bfloat16()
    a = torch.randn(3, 6, 96, generator=g).bfloat16()  # [entries, R, d_in]
    b = (torch.randn(3, 2, 6, 64, generator=g) / 10).bfloat16()  # [entries, N / 64, R, 64], N = 100
    entries, row_start = torch.tensor([2, 1]), torch.tensor([0, 3, 5])
    outs = [torch.zeros(5, 100).bfloat16() for _ in range(2)]
    for build, out in zip((portable, kernels), outs, strict=True):
        build.lora_add(x, [a], [b], [100], [entries], row_start, out)
    assert outs[0].abs().min() > 0  # every row and column written
    torch.testing.assert_close(outs[0].float(), outs[1].float(), rtol=0.02, atol=0.02)
