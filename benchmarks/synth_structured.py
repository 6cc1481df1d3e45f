"""`synth generate --structured-output` vs free-form answers, with the embedded SmolLM2-135M as the teacher.

Starts `loraforge serve --model smollm2-135m` on loopback and runs the same Banking77 generation (the first
`--labels` intents, two real seed examples each, as tests/synth/test_slow_embedded_teacher.py does) with
and without a JSON Schema in `response_format`, over several seed rotations and temperatures. Prints, per
mode, what the teacher's examples became: saved rows, duplicates (well-formed, in-label, but a copy of a seed
or an earlier row), and each drop reason; then the ratio of saved rows and of well-formed in-label examples
(saved + duplicates) per request, structured over free, measured in this run.

    .venv/bin/python benchmarks/synth_structured.py                       # 3 rotations x 2 temperatures
    .venv/bin/python benchmarks/synth_structured.py --rotations 5 --temperatures 0.2 0.5 0.8
"""

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from loraforge.demo.processes import Children, free_port
from loraforge.hardware import describe
from loraforge.synth.prompts import Seed
from loraforge.synth.records import load_seeds, load_texts
from loraforge.synth.report import Summary
from loraforge.synth.synthesize import GenerateConfig, synthesize
from loraforge.synth.teacher import TeacherClient, TeacherSettings
from loraforge.synth.validation import OutputSpec, load_labels

ROOT = Path(__file__).resolve().parents[1]
BANKING = ROOT.parent / "shared/data/banking77"
TEACHER = "smollm2-135m"
DESCRIPTION = (
    "Banking customer support: the input is a customer's message to their bank's app, "
    "the output is the intent it expresses."
)


def task(tmp: Path, labels: int) -> tuple[OutputSpec, list[Seed], list[str]]:
    """The first `labels` intents, two real seed examples each, and the test texts (kept out of the data)."""
    names = load_labels(BANKING / "labels.json")[:labels]
    spec = OutputSpec(labels=names)
    train = [json.loads(line) for line in (BANKING / "train.jsonl").read_text().splitlines()]
    seeds = tmp / "seeds.jsonl"
    seeds.write_text(
        "".join(json.dumps(r) + "\n" for name in names for r in [r for r in train if r["label"] == name][:2])
    )
    return spec, load_seeds(seeds, spec), load_texts(BANKING / "test.jsonl", "test set")


def run_once(
    url: str,
    tmp: Path,
    task_data: tuple[OutputSpec, list[Seed], list[str]],
    args: argparse.Namespace,
    structured: bool,
    rotation: int,
    temp: float,
) -> Summary:
    spec, seeds, test_texts = task_data
    config = GenerateConfig(
        description=DESCRIPTION,
        spec=spec,
        n=10_000,  # never reached: every run spends its whole request budget
        out=tmp / f"out-{structured}-{rotation}-{temp}.jsonl",
        seeds=seeds,
        test_texts=test_texts,
        per_request=args.per_request,
        seeds_per_request=4,
        concurrency=4,
        max_requests=args.requests,
        shuffle_seed=rotation,
        structured=structured,
    )
    settings = TeacherSettings(
        url=url, model=TEACHER, temperature=temp, max_tokens=args.max_tokens, timeout_s=300
    )

    async def go() -> Summary:
        async with TeacherClient(settings) as teacher:
            return await synthesize(config, teacher)

    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=int, default=8, help="the first N Banking77 intents")
    ap.add_argument("--requests", type=int, default=10, help="teacher requests per run")
    ap.add_argument("--per-request", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--rotations", type=int, default=3, help="seed-rotation orders (shuffle seeds 0..N-1)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.2, 0.8])
    args = ap.parse_args()
    print(f"CPU: {describe()}", flush=True)
    totals: dict[bool, Counter] = {False: Counter(), True: Counter()}
    with tempfile.TemporaryDirectory() as tmp, Children(Path(tmp) / "logs") as children:
        url = children.start("serve", ["serve", "--model", TEACHER], free_port()) + "/v1"
        task_data = task(Path(tmp), args.labels)
        for temp in args.temperatures:
            for rotation in range(args.rotations):
                for structured in (False, True):
                    started = time.monotonic()
                    s = run_once(url, Path(tmp), task_data, args, structured, rotation, temp)
                    seconds = time.monotonic() - started
                    dups = sum(s.duplicates.values())
                    print(
                        f"{'structured' if structured else 'free      '} T={temp} rotation {rotation}: "
                        f"{s.requests} requests, {s.generated} examples, {s.valid} saved, {dups} duplicates, "
                        f"dropped {dict(s.dropped)}, {seconds:.1f} s",
                        flush=True,
                    )
                    t = totals[structured]
                    t.update(requests=s.requests, examples=s.generated, saved=s.valid, duplicates=dups)
                    t.update({f"dropped {k}": v for k, v in s.dropped.items()})
                    t["seconds"] += seconds
    for structured, t in totals.items():
        print(f"{'structured' if structured else 'free'}: {dict(t)}")
    free, constrained = totals[False], totals[True]

    def per_request(t: Counter, key: str) -> float:
        return sum(t[k] for k in key.split("+")) / max(1, t["requests"])

    for key, what in (("saved", "saved rows"), ("saved+duplicates", "well-formed in-label examples")):
        a, b = per_request(free, key), per_request(constrained, key)
        ratio = f"{b / a:.1f}x" if a else "inf (free: none)"
        print(f"{what} per request: free {a:.2f}, structured {b:.2f} -> {ratio}")


if __name__ == "__main__":
    main()
