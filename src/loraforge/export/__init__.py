"""Exports of a trained adapter to the formats other tools load (a merged HF model)."""

from loraforge.export.merged import export_merged

__all__ = ["export_merged"]
