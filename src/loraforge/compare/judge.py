"""A pairwise LLM judge (any OpenAI-compatible model), asked twice with the order swapped: a side wins an
item only when both orders agree; anything else (disagreement, refusal, malformed verdict) is a tie."""

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field

import httpx

JUDGE_SYSTEM = (
    "You are an impartial judge comparing two assistant responses to the same conversation. "
    "Judge which response better fulfils the user's request: correctness first, then helpfulness and "
    "concision. Ignore the order in which they appear and their length. Answer with exactly one of: "
    "A, B, or TIE."
)
VERDICT = re.compile(r"^\W*(?:verdict\s*:?\s*)?(A|B|TIE)\b\W*$", re.IGNORECASE)
REFUSAL = re.compile(r"\b(sorry|cannot|can't|unable|won't|not able)\b", re.IGNORECASE)
VERDICT_MAX_TOKENS = 8


@dataclass(frozen=True)
class JudgeSettings:
    url: str
    model: str
    api_key: str | None = None
    concurrency: int = 4
    timeout_s: float = 120.0


@dataclass
class JudgeTally:
    """Outcomes per item (1 candidate wins, 0 baseline wins, 0.5 tie) and what the verdicts were."""

    outcomes: list[float] = field(default_factory=list)
    verdicts: Counter = field(default_factory=Counter)  # A, B, TIE, refused, malformed, error

    def summary(self) -> dict[str, int]:
        wins = sum(o == 1.0 for o in self.outcomes)
        losses = sum(o == 0.0 for o in self.outcomes)
        return {
            "wins": wins,
            "losses": losses,
            "ties": len(self.outcomes) - wins - losses,
            "refused_verdicts": self.verdicts["refused"],
            "malformed_verdicts": self.verdicts["malformed"],
            "judge_errors": self.verdicts["error"],
        }


def parse_verdict(text: str | None) -> str:
    """'A', 'B', 'TIE', 'refused' or 'malformed'."""
    if text is None:
        return "malformed"
    match = VERDICT.match(text.strip())
    if match:
        return match.group(1).upper()
    return "refused" if REFUSAL.search(text) else "malformed"


def judge_messages(conversation: list[dict[str, str]], first: str, second: str) -> list[dict[str, str]]:
    shown = "\n".join(f"[{m['role']}]: {m['content']}" for m in conversation)
    user = (
        f"Conversation:\n{shown}\n\n--- Response A ---\n{first}\n\n--- Response B ---\n{second}\n\n"
        "Which response is better? Answer A, B, or TIE."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def combine(first: str, second: str) -> float:
    """Pass 1 shows (candidate, baseline), pass 2 (baseline, candidate)."""
    if first == "A" and second == "B":
        return 1.0
    if first == "B" and second == "A":
        return 0.0
    return 0.5


async def judge_all(
    settings: JudgeSettings, items: list[tuple[list[dict[str, str]], str | None, str | None]]
) -> JudgeTally:
    """Judge (conversation, candidate text, baseline text) triples; a failed side loses to an answer."""
    tally = JudgeTally()
    limit = asyncio.Semaphore(settings.concurrency)
    headers = {"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    async with httpx.AsyncClient(timeout=settings.timeout_s) as client:

        async def verdict(conversation, first, second) -> str:
            body = {
                "model": settings.model,
                "messages": judge_messages(conversation, first, second),
                "max_tokens": VERDICT_MAX_TOKENS,
                "temperature": 0,
            }
            async with limit:
                try:
                    resp = await client.post(
                        f"{settings.url.rstrip('/')}/chat/completions", json=body, headers=headers
                    )
                    resp.raise_for_status()
                    text = resp.json()["choices"][0]["message"]["content"]
                except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
                    return "error"
            return parse_verdict(text if isinstance(text, str) else None)

        async def one(conversation, candidate, baseline) -> float:
            if candidate is None or baseline is None:
                return 0.5 if candidate is None and baseline is None else (0.0 if candidate is None else 1.0)
            first, second = await asyncio.gather(
                verdict(conversation, candidate, baseline), verdict(conversation, baseline, candidate)
            )
            tally.verdicts.update([first, second])
            return combine(first, second)

        tally.outcomes = list(await asyncio.gather(*(one(*item) for item in items)))
    return tally
