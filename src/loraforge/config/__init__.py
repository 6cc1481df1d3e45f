"""The declarative fine-tuning config (YAML + pydantic)."""

from loraforge.config.loading import dump_config, load_config, validate_config
from loraforge.config.schema import FineTuneConfig

__all__ = ["FineTuneConfig", "dump_config", "load_config", "validate_config"]
