"""PixArt-Sigma and PixArt-alpha: the ``pixart`` family through ``PipelineAdapter`` (the names
this module had before the other families came)."""

from benchmark.families.builtin import FAMILIES
from benchmark.models.pipeline import PipelineAdapter as PixArtAdapter

__all__ = ["PixArtAdapter", "PIPELINE_CLASSES"]

PIPELINE_CLASSES = FAMILIES["pixart"].pipelines
