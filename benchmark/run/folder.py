"""The run folder: checked before a run starts, and held by one run at a time.

    check_folder(out, "--out")      # a one-line ValueError if a run could not write there
    lock = FolderLock(out)
    lock.acquire()                  # creates the folder; a second run gets a ValueError
    ...
    lock.release(undo=True)         # a run refused before it wrote anything: remove what
                                    # acquire() created, so that the folder is as it was

The lock is an exclusive ``filelock`` lock on ``<out>/.hadabench.lock``, held by the process
(the operating system drops it when the process dies, so a killed run never blocks a rerun).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from filelock import FileLock, Timeout

from benchmark.errors import UserError

__all__ = ["LOCK_NAME", "FolderLock", "check_folder"]

LOCK_NAME = ".hadabench.lock"


def check_folder(path: str | Path, flag: str) -> None:
    """Refuse a folder that cannot be one, or that cannot be created or written to, before
    anything is loaded: a file, a path under a file, a folder without write permission."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path} is under a file ({existing})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: no permission to write in {existing}")


class FolderLock:
    """One run per folder: a second run into a folder that a run holds is refused at once."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._lock = FileLock(self.path, timeout=0)
        self._created: list[Path] = []

    def acquire(self) -> None:
        missing = [p for p in (self.folder.absolute(), *self.folder.absolute().parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._created = ([] if self.path.exists() else [self.path]) + missing
            self._lock.acquire()
        except Timeout:
            raise UserError(f"{self.folder} is in use by another hadabench run (it holds {self.path}): "
                             "wait for it to finish, or choose another --out") from None
        except OSError as error:
            self.release(undo=True)
            raise UserError(f"--out {self.folder}: cannot write there ({error.strerror or error})") from None

    def release(self, undo: bool = False) -> None:
        """Let the next run in; with ``undo``, also remove the lock file and the folders that
        acquire() created (the run wrote nothing)."""
        self._lock.release()
        if undo:
            for path in self._created:  # deepest first: the lock file, then new folders
                with contextlib.suppress(OSError):
                    path.unlink() if path == self.path else path.rmdir()
        self._created = []
