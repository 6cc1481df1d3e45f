"""Fuzz of the engine's inputs on the tiny model, through the path the server uses (AsyncEngine.generate ->
Engine.add_request -> steps): token ids, sampling parameters and adapter names, hostile ones included.

Oracle, per example: the request is either refused at submission with a LoraforgeError (RequestError,
ModelNotFoundError: what the API turns into a 4xx), or it runs to a normal end; a well-behaved greedy request
submitted just before it finishes with exactly the tokens it produces alone; and the engine thread lives on.
"""

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loraforge.errors import LoraforgeError
from loraforge.serve.engine import EngineConfig
from loraforge.serve.engine.async_engine import AsyncEngine
from loraforge.serve.engine.sequence import SamplingParams
from tests.reliability.hostile import HUGE_INTS, ODD_TEXT, sweep_settings

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(600)]

FUZZ_EXAMPLES = 100
EXAMPLE_TIMEOUT_S = 60.0  # one example's two requests; a hang is a violation, not a stuck suite
BYSTANDER_PROMPT = [5, 17, 42, 99, 7]
BYSTANDER = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

ODD_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1.0, 1e-45, 1e308, math.inf, -math.inf, math.nan]),
)


@st.composite
def engine_request(draw, vocab: int, adapters: list[str]):
    ids = draw(
        st.lists(
            st.one_of(st.integers(0, vocab - 1), st.integers(-2 * vocab, 2 * vocab), HUGE_INTS),
            min_size=0,
            max_size=12,
        )
    )
    params = SamplingParams(
        max_tokens=draw(st.one_of(st.integers(-3, 40), HUGE_INTS)),
        temperature=draw(st.one_of(st.sampled_from([0.0, 0.7, 1.0, 2.0]), ODD_FLOATS)),
        top_p=draw(st.one_of(st.sampled_from([1.0, 0.9, 0.1]), ODD_FLOATS)),
        top_k=draw(st.one_of(st.integers(-5, 2 * vocab), HUGE_INTS)),
        seed=draw(st.one_of(st.none(), st.integers(0, 2**32), HUGE_INTS)),
        stop=draw(st.lists(ODD_TEXT, max_size=4)),
        ignore_eos=draw(st.booleans()),
    )
    adapter = draw(st.sampled_from([None, *adapters, "no-such-adapter", "../ad00", ""]))
    return ids, params, adapter


async def collect(engine: AsyncEngine, ids, params, adapter):
    """All events of one request: (text, last event); raises what generate raises at submission."""
    text, last = "", None
    async for event in engine.generate(ids, params, adapter):
        text, last = text + event.text, event
    return text, last


async def pair(engine: AsyncEngine, ids, params, adapter):
    """The bystander and the fuzzed request, in flight together."""
    bystander = asyncio.ensure_future(collect(engine, list(BYSTANDER_PROMPT), _copy(BYSTANDER), None))
    await asyncio.sleep(0)  # submitted first
    fuzzed = asyncio.ensure_future(collect(engine, ids, params, adapter))
    return await asyncio.wait_for(
        asyncio.gather(bystander, fuzzed, return_exceptions=True), EXAMPLE_TIMEOUT_S
    )


def _copy(params: SamplingParams) -> SamplingParams:
    return SamplingParams(**{**vars(params), "stop": list(params.stop)})


def test_hostile_engine_inputs_never_crash_the_engine_or_harm_other_requests(
    tiny_model_dir, many_adapters_dir
):
    engine = AsyncEngine(
        EngineConfig(model=str(tiny_model_dir), precision="fp32", adapter_dir=many_adapters_dir, block_size=8)
    )
    engine.start()
    vocab = engine.engine.model.cfg.vocab_size
    violations: list[str] = []
    tried = 0
    try:
        reference_text, reference = asyncio.run(collect(engine, BYSTANDER_PROMPT, _copy(BYSTANDER), None))
        assert reference.completion_tokens == BYSTANDER.max_tokens

        @sweep_settings(FUZZ_EXAMPLES)
        @given(request=engine_request(vocab, ["ad00", "ad05"]))
        def probe(request) -> None:
            nonlocal tried
            tried += 1
            ids, params, adapter = request
            shown = f"ids={ids} params={params} adapter={adapter!r}"
            try:
                (by, fuzzed) = asyncio.run(pair(engine, ids, params, adapter))
            except TimeoutError:
                violations.append(f"hung for {EXAMPLE_TIMEOUT_S} s on {shown}")
                return
            if isinstance(fuzzed, Exception) and not isinstance(fuzzed, LoraforgeError):
                violations.append(f"submission raised {type(fuzzed).__name__}: {fuzzed} for {shown}")
            elif not isinstance(fuzzed, Exception):
                last = fuzzed[1]
                if last.error is not None and not isinstance(last.error, LoraforgeError):
                    violations.append(f"ended with {type(last.error).__name__}: {last.error} for {shown}")
            if isinstance(by, Exception) or by[1].error is not None or by[0] != reference_text:
                got = by if isinstance(by, Exception) else (by[1].error, by[1].finish_reason, by[0])
                violations.append(f"the bystander was harmed ({got!r}) by {shown}")
            if not engine._thread.is_alive():
                violations.append(f"the engine thread died on {shown}")

        probe()
    finally:
        engine.close()
    assert tried == FUZZ_EXAMPLES
    assert not violations, f"{len(violations)} of {tried} examples:\n" + "\n".join(violations[:30])
