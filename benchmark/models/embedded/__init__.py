"""The embedded default model (see MODEL_CARD.md): adapter, data set, training, speed."""

from benchmark.models.embedded.adapter import EMBEDDED_DIR, EmbeddedAdapter

__all__ = ["EMBEDDED_DIR", "EmbeddedAdapter"]
