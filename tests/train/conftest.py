import json

import pytest

from loraforge.config import validate_config

INTENTS = ["card_arrival", "activate_my_card", "transfer_failed", "exchange_rate"]
TEMPLATES = [
    "where is my card {n}",
    "how do I activate my card {n}",
    "why did my transfer fail {n}",
    "what is the exchange rate {n}",
]


@pytest.fixture
def toy_data(tmp_path):
    """A tiny, learnable intent task: the message wording determines the label."""
    rows = [{"text": TEMPLATES[i % 4].format(n=i), "label": INTENTS[i % 4]} for i in range(64)]
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def make_config(tiny_model_dir, toy_data):
    def build(**trainer):
        return validate_config(
            {
                "base_model": str(tiny_model_dir),
                "data": {
                    "train": str(toy_data),
                    "test": str(toy_data),
                    "validation_fraction": 0.25,
                    "seed": 3,
                },
                "prompt": {"template": "Message: {text}\nIntent:"},
                "target": {"column": "label"},
                "adapter": {"r": 8, "alpha": 16, "dropout": 0.1},
                "trainer": {
                    "batch_size": 8,
                    "learning_rate": 3e-3,
                    "log_every": 1,
                    "precision": "fp32",
                    **trainer,
                },
                "evaluation": {"task": "classification", "max_new_tokens": 6, "limit": 8},
            }
        )

    return build
