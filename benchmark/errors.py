"""The one user-error type.

``UserError`` is bad input: a wrong flag, file, name or value. The command line turns it, and
only it, into one line and exit status 2. Any other exception is a bug and keeps its
traceback (exit 1). It subclasses ``ValueError`` so that callers of the Python API who catch
``ValueError`` keep working.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input from the user or a contributor: reported as one line, exit 2."""
