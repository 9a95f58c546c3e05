"""Markdown from strings that this program did not write itself, made inert: the functions of
``benchmark.results.markdown`` (``text``, ``cell``, ``code``, ``json_block``, ``link``), which
live in the ``results`` layer so that the run's own reports (the sensitivity study's README)
write through the very same ones as the leaderboard.
"""

from __future__ import annotations

from benchmark.results.markdown import cell, code, json_block, link, text

__all__ = ["cell", "code", "json_block", "link", "text"]
