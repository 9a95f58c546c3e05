"""The run folder: checked before a run starts, held by one run at a time, and everything a
run keeps in it (``RunFolder``):

    results.json            the results (benchmark/results/schema.py), rewritten after every cell
    reference.safetensors   the full-precision generation, reused by every cell and by reruns
    images/<cell>/NN.png    the generated images of each cell (and images/fp/ for the reference)
    grid_<precision>.png    the paper's Figure 3: a row per caption, a column per transform
    .hadabench.lock         locked by the run in progress: one run per folder

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
import shutil
import textwrap
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from benchmark.errors import UserError
from benchmark.fileio import sweep_temporaries, write_atomic, write_json
from benchmark.logs import get_logger
from benchmark.models.base import Generation
from benchmark.results.schema import check_results, read_results

__all__ = ["LOCK_NAME", "FolderLock", "RunFolder", "check_folder", "safe_label", "save_grid", "save_images"]

log = get_logger("run").info
GRID_CAPTIONS = 8  # rows of the Figure-3 grid

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


def safe_label(label: str) -> str:
    """A transform label as a folder name."""
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in label)


def save_images(images: torch.Tensor, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for index, array in enumerate(pixels):
        with Image.fromarray(array) as image:
            write_atomic(folder / f"{index:02d}.png", lambda tmp, image=image: image.save(tmp, format="PNG"))


def save_grid(columns: list[tuple[str, torch.Tensor, list[str]]], path: Path, rows: int = GRID_CAPTIONS) -> None:
    """The paper's Figure 3: one row per caption (numbered at the left), one column per
    ``(label, images, notes)`` with its label above (wrapped between words, never inside one)
    and each image's note (its SQNR and PSNR) below it."""
    size, label_height, note_height, margin = 128, 26, 12, 28
    count = min(rows, len(columns[0][1]))
    grid = Image.new("RGB", (margin + size * len(columns), label_height + (size + note_height) * count), "white")
    draw = ImageDraw.Draw(grid)
    for row in range(count):
        draw.text((3, label_height + row * (size + note_height) + size // 2 - 6), f"#{row}", fill="black")
    for col, (label, images, notes) in enumerate(columns):
        left = margin + col * size
        lines = textwrap.wrap(label, 20, break_long_words=False, break_on_hyphens=False)
        for line, text in enumerate(lines[:2]):
            draw.text((left + 3, 1 + 12 * line), text if line < 1 or len(lines) <= 2 else text + "...", fill="black")
        pixels = (images[:rows].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for row, array in enumerate(pixels):
            top = label_height + row * (size + note_height)
            grid.paste(Image.fromarray(array).resize((size, size), Image.NEAREST), (left, top))
            if row < len(notes):
                draw.text((left + 3, top + size), notes[row], fill="black")
    write_atomic(path, lambda tmp: grid.save(tmp, format="PNG"))


def _notes(cell: dict, count: int) -> list[str]:
    """Per image of a cell: its SQNR and PSNR (dB), where they were computed."""
    per_sample = cell.get("per_sample") or {}
    notes = []
    for index in range(count):
        parts = [f"{name} {values[index]:.1f}" if isinstance(values[index], (int, float)) else f"{name} {values[index]}"
                 for name, key in (("SQNR", "sqnr_db"), ("PSNR", "psnr_db"))
                 if isinstance(values := per_sample.get(key), list) and index < len(values)]
        notes.append(" ".join(parts))
    return notes


def _reference_damage(tensors: dict, captions: int) -> str | None:
    """What is wrong with a stored reference whose key matches (written by hand, or damaged
    with its key intact), or None: one entry per caption, images (N, 3, H, W) in [0, 1],
    everything finite. A damaged reference would blame the next cell's transform."""
    latents, images = tensors.get("latents"), tensors.get("images")
    if latents is None or images is None:
        return "latents or images missing"
    if latents.dim() < 2 or latents.shape[0] != captions or images.shape[:1] != (captions,):
        return f"{latents.shape[0] if latents.dim() else 0} entries for {captions} captions"
    if images.dim() != 4 or images.shape[1] != 3:
        return f"images of shape {tuple(images.shape)}, not (N, 3, H, W)"
    if not (bool(torch.isfinite(latents).all()) and bool(torch.isfinite(images).all())):
        return "values that are not finite"
    if images.numel() and not (0.0 <= float(images.min()) and float(images.max()) <= 1.0):
        return "image values outside [0, 1]"
    return None


class RunFolder:
    """Everything one run keeps in its folder, read and written in one place."""

    FILES = ("results.json", "reference.safetensors", "images", "grid_*.png")  # what --fresh clears

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.results_path = self.path / "results.json"
        self.reference_path = self.path / "reference.safetensors"

    def check(self) -> None:
        check_folder(self.path, "--out")

    def lock(self) -> FolderLock:
        lock = FolderLock(self.path)
        lock.acquire()
        sweep_temporaries(self.path, recursive=True)  # a killed run's half-written files: ours alone now
        return lock

    def read_results(self) -> dict | None:
        """The folder's results, validated; None when it holds none."""
        return read_results(self.results_path) if self.results_path.exists() else None

    def write_results(self, results: dict) -> None:
        check_results(results)  # what a run writes is what it reads back on resume
        write_json(self.results_path, results)

    def clear(self) -> None:
        for pattern in self.FILES:
            for path in self.path.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def cell_images(self, precision: str, label: str) -> Path:
        return self.path / "images" / precision / safe_label(label)

    def images_damage(self, precision: str, label: str, count: int) -> str | None:
        """What is wrong with a finished cell's saved images, or None: ``count`` PNGs that read
        back whole. A cell whose images were deleted or truncated is computed again on resume."""
        folder = self.cell_images(precision, label)
        files = [folder / f"{index:02d}.png" for index in range(count)]
        missing = sum(not f.is_file() for f in files)
        if missing:
            return f"{missing} of its {count} images missing"
        for file in files:
            try:
                with Image.open(file) as image:
                    image.load()  # decodes every byte: a truncated file fails here
            except (OSError, ValueError, SyntaxError) as error:
                return f"{file.name} unreadable ({' '.join(str(error).split())})"
        return None

    # -- the full-precision reference, keyed like the calibration cache --
    def read_reference(self, key: str, captions, seeds, settings: dict) -> Generation | None:
        """The cached reference made with ``key``; None (with a note) when there is none, it was
        made with other settings, or it cannot be read: it is then generated again, never trusted."""
        if not self.reference_path.exists():
            return None
        try:
            with safe_open(self.reference_path, "pt") as handle:
                stored = (handle.metadata() or {}).get("key")
            if stored != key:
                log(f"reference: {self.reference_path} was generated with other settings; generating again")
                return None
            tensors = load_file(self.reference_path)
            damage = _reference_damage(tensors, len(captions))
            if damage:
                log(f"reference: {self.reference_path} is damaged ({damage}); generating again")
                return None
            log(f"reference: reusing {self.reference_path}")
            return Generation(captions, seeds, tensors["latents"], tensors["images"], settings)
        except Exception as error:  # a damaged cache is regenerated, never trusted
            log(f"reference: {self.reference_path} unreadable ({error}); generating again")
            return None

    def write_reference(self, generation: Generation, key: str) -> None:
        tensors = {"latents": generation.latents.contiguous(), "images": generation.images.contiguous()}
        write_atomic(self.reference_path, lambda tmp: save_file(tensors, str(tmp), metadata={"key": key}))
        save_images(generation.images, self.path / "images" / "fp")

    # -- the paper's Figure 3 --
    def write_grid(self, precision: str, cells: list[dict], reference_images: torch.Tensor) -> str:
        """The grid of ``precision``: full precision, then every finished cell's saved images
        (resumed ones too); returns the file's name."""
        columns = [("full precision", reference_images, [])]
        for cell in cells:
            folder = self.cell_images(precision, cell["label"])
            if cell["precision"] != precision or cell["status"] != "ok" or not folder.exists():
                continue
            files = sorted(folder.glob("*.png"))[:GRID_CAPTIONS]
            images = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                                  for f in files]).float() / 255
            columns.append((cell["label"], images, _notes(cell, len(images))))
        name = f"grid_{precision}.png"
        save_grid(columns, self.path / name)
        return name
