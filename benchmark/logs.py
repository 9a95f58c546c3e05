"""hadabench's one logger, ``benchmark``: progress lines, notes and warnings of every layer
(``benchmark.metrics``, ``benchmark.run`` ... are its children).

Messages go to standard error, one line each, without decoration, as the commands print
them; the results themselves go to files and tables to standard output. A program that
configures logging itself can replace the handler (``logging.getLogger("benchmark")``).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LOGGER", "get_logger"]

LOGGER = logging.getLogger("benchmark")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message comes (a test's capture, a redirect)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler's constructor sets it; the property decides
        pass


if not LOGGER.handlers:
    _handler = _CurrentStderr()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.INFO)


def get_logger(name: str) -> logging.Logger:
    """The child logger of one part, e.g. ``get_logger("metrics")`` -> ``benchmark.metrics``."""
    return LOGGER.getChild(name)
