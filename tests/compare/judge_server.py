"""A scripted judge: an OpenAI-compatible server whose verdicts follow fixed rules, so tests know them.

It prefers the response containing "GOOD"; a conversation containing "refuse" gets a refusal, "garble" a
malformed verdict, "biased" always "A" (a position bias, which the order swap must turn into a tie).
"""

import re

from fastapi import FastAPI, Request

RESPONSE = re.compile(r"--- Response A ---\n(.*)\n\n--- Response B ---\n(.*)\n\nWhich", re.DOTALL)


def create_judge(calls: list[dict]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        calls.append(body)
        prompt = body["messages"][-1]["content"]
        first, second = RESPONSE.search(prompt).groups()
        if "refuse" in prompt:
            verdict = "I'm sorry, but I can't help with judging this."
        elif "garble" in prompt:
            verdict = "Both have merits, hard to say"
        elif "biased" in prompt or "GOOD" in first and "GOOD" not in second:
            verdict = "A"
        elif "GOOD" in second and "GOOD" not in first:
            verdict = "B"
        else:
            verdict = "TIE"
        message = {"role": "assistant", "content": verdict}
        return {
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": message}],
        }

    return app
