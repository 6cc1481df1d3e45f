"""The demo's users and reviewers: Banking77 questions sent through the gateway with the official `openai`
client, and a share of the answers reviewed with the true label (a score of 1 when right, else a
correction), as people correcting a prototype's answers would."""

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

# Ten intents that a customer-support team would route first; a subset keeps the demo to minutes on 2 cores.
LABELS = (
    "card_arrival",
    "exchange_rate",
    "lost_or_stolen_card",
    "age_limit",
    "pin_blocked",
    "cancel_transfer",
    "top_up_limits",
    "apple_pay_or_google_pay",
    "change_pin",
    "declined_transfer",
)
SYSTEM = (
    "You route banking customer messages. Answer with exactly one intent from this list and nothing else: "
    + ", ".join(LABELS)
)


@dataclass(frozen=True)
class Question:
    text: str
    label: str


def questions(data_dir: Path, split: str, seed: int = 0) -> Iterator[Question]:
    """The split's rows of the demo's intents, shuffled, endlessly (a new shuffle each pass)."""
    rows = []
    with (data_dir / f"{split}.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            if row["label"] in LABELS:
                rows.append(Question(row["text"], row["label"]))
    rng = random.Random(seed)
    while True:
        rng.shuffle(rows)
        yield from rows


@dataclass
class Outcome:
    served_by: str
    correct: bool
    reviewed: bool


class Users:
    """Send questions through the gateway, `concurrency` at a time; review a share of the answers."""

    def __init__(self, gateway_url: str, model: str, task: str, review_share: float, concurrency: int = 8):
        from openai import OpenAI

        self.gateway_url = gateway_url
        self.client = OpenAI(base_url=f"{gateway_url}/v1", api_key="sk-demo", max_retries=2, timeout=300)
        self.model, self.task = model, task
        self.review_share = review_share
        self.concurrency = concurrency
        self.rng = random.Random(7)
        self.sent = 0

    def send(self, batch: list[Question], review_share: float | None = None) -> list[Outcome]:
        share = self.review_share if review_share is None else review_share
        reviewed = [self.rng.random() < share for _ in batch]
        start, self.sent = self.sent, self.sent + len(batch)
        with ThreadPoolExecutor(self.concurrency) as pool, httpx.Client(timeout=60) as http:
            jobs = [
                pool.submit(self._ask, http, q, f"user-{start + i}", review)
                for i, (q, review) in enumerate(zip(batch, reviewed, strict=True))
            ]
            return [job.result() for job in jobs]

    def _ask(self, http: httpx.Client, question: Question, user: str, review: bool) -> Outcome:
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.model,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question.text}],
            max_tokens=16,
            temperature=0,
            user=user,
            extra_headers={"X-Loraforge-Task": self.task},
        )
        answer = (raw.parse().choices[0].message.content or "").strip()
        correct = answer == question.label
        if review:
            feedback = {"call_id": raw.headers["x-loraforge-call-id"], "score": 1.0 if correct else 0.0}
            if not correct:
                feedback["corrected_output"] = question.label
            http.post(f"{self.gateway_url}/v1/feedback", json=feedback).raise_for_status()
        return Outcome(raw.headers["x-loraforge-served-by"], correct, review)
