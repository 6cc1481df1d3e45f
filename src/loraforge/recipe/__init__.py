"""Recipes: what to train for a task, chosen from its data."""

from loraforge.recipe.infer import Inferred, infer_config

__all__ = ["Inferred", "infer_config"]
