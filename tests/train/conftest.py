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


def write_toy_data(path):
    """A tiny, learnable intent task: the message wording determines the label."""
    rows = [{"text": TEMPLATES[i % 4].format(n=i), "label": INTENTS[i % 4]} for i in range(64)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def toy_config(model_dir, data, dropout: float = 0.1, **trainer):
    """A validated fine-tuning config of the tiny model on the toy task; `trainer` keys override."""
    return validate_config(
        {
            "base_model": str(model_dir),
            "data": {"train": str(data), "test": str(data), "validation_fraction": 0.25, "seed": 3},
            "prompt": {"template": "Message: {text}\nIntent:"},
            "target": {"column": "label"},
            "adapter": {"r": 8, "alpha": 16, "dropout": dropout},
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


@pytest.fixture
def toy_data(tmp_path):
    return write_toy_data(tmp_path / "toy.jsonl")


@pytest.fixture
def make_config(tiny_model_dir, toy_data):
    def build(**trainer):
        return toy_config(tiny_model_dir, toy_data, **trainer)

    return build
