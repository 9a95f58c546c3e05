"""What made a run's numbers: package versions, the checkout's commit, the machine and its
numerics, recorded in every results file (``environment``)."""

from __future__ import annotations

import contextlib
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from benchmark._version import __version__

__all__ = ["environment", "git_commit", "versions"]

# The repository root when the package runs from a checkout; in an installed wheel this is
# site-packages, which holds no .git and so reports no commit.
CHECKOUT = Path(__file__).resolve().parents[2]


def versions() -> dict:
    out = {"hadabench": __version__, "python": platform.python_version()}
    for dist in ("torch", "diffusers", "transformers", "open_clip_torch", "pyiqa", "triton"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def git_commit(out: Path, root: Path = CHECKOUT) -> str | None:
    """HEAD of the checkout the package runs from, "-dirty" when tracked files changed (the
    run's own folder aside: a run into leaderboard/ rewrites tracked files); None outside a
    checkout (an installed package, even one installed inside another repository)."""
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if done.returncode != 0:
            return None
        exclude = []
        with contextlib.suppress(ValueError):
            exclude = [f":(exclude){out.resolve().relative_to(root).as_posix()}"]
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", *exclude], capture_output=True, text=True, timeout=5).stdout.strip()
        return done.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment(out: Path, device: str, processes: int, numerics: dict) -> dict:
    return {**versions(), "git_commit": git_commit(out), "device": device, "torch_threads": torch.get_num_threads(),
            "processes": processes, "platform": platform.platform(), "numerics": numerics}
