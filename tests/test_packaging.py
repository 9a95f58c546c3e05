"""The wheel: what it ships and that the default benchmark's inputs load from it alone."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds the wheel
def test_the_wheel_ships_the_default_runs_data_and_no_scripts(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("hadabench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("benchmark/data/embedded/calibration.txt", "benchmark/data/embedded/evaluation.txt",
                   "benchmark/models/embedded/embedded.json", "benchmark/cli/__init__.py", "baselines/hadanorm.py"):
        assert needed in names, needed
    assert not any(name.startswith(("scripts/", "tests/", "docs/")) for name in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    # run from the unpacked wheel, away from the checkout: the captions and the embedded model load,
    # and no commit is claimed
    code = ("import benchmark, sys; from pathlib import Path; from benchmark.captions import load_captions; "
            "from benchmark.run.provenance import git_commit; "
            "assert Path(benchmark.__file__).is_relative_to(Path(sys.argv[1])), benchmark.__file__; "
            "print(len(load_captions('embedded')), git_commit(Path('.')))")
    done = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["128", "None"]
