"""PixArt-Sigma and PixArt-alpha: the ``pixart`` family through ``PipelineAdapter`` (the names
this module had before the other families came)."""

from ..families import FAMILIES
from .pipeline import PipelineAdapter as PixArtAdapter

__all__ = ["PixArtAdapter", "PIPELINE_CLASSES"]

PIPELINE_CLASSES = FAMILIES["pixart"].pipelines
