"""The Dockerfile's install, done here the way the image does it (no image can be pulled here).

The image copies a list of paths and runs ``pip install .`` on them. This test copies exactly the
Dockerfile's ``COPY`` sources into an empty folder, installs that folder (not editable) into a fresh
virtual environment, and runs the installed ``onceonly demo`` from a directory outside the
repository: a package, migration, policy, template or declaration missing from the image fails it.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def copy_sources(dockerfile: str = DOCKERFILE.read_text()) -> list[str]:
    """Every source path of the Dockerfile's ``COPY`` instructions (the last word is the target)."""
    sources: list[str] = []
    for line in dockerfile.splitlines():
        words = line.split()
        if words and words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def test_every_package_is_copied_into_the_image() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    assert set(packages) <= set(copy_sources())
    assert 'ENTRYPOINT ["onceonly"]' in DOCKERFILE.read_text()


def test_the_image_install_runs_the_demo(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in copy_sources():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, context / source)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile", str(context)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    demo = subprocess.run(
        [str(env_dir / "bin" / "onceonly"), "demo", "--citizens", "20"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-3000:]
    assert "every step behaved as expected" in demo.stdout
