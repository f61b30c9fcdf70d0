"""The package as users install it: the wheel's contents and console scripts, and the pins it ships with."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"strokect-search": "automl.search:main", "strokect-leaderboard": "automl.leaderboard:main",
           "strokect-app": "app:main"}


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if match:
            pins.setdefault(match.group(1).lower(), match.group(2))
    return pins


def test_pins_are_compiled_from_pyproject_and_agree() -> None:
    runtime, dev = _pins("requirements.txt"), _pins("requirements-dev.txt")
    for name in ("requirements.txt", "requirements-dev.txt"):
        assert "uv pip compile pyproject.toml" in (REPO / name).read_text(encoding="utf-8").splitlines()[1]
    assert runtime["torch"] == "2.14.1" and runtime["torchvision"] == "0.29.1"
    assert {"onnx", "onnxruntime", "streamlit", "gradio", "optuna"} <= set(runtime)
    assert {"pytest", "scikit-image", "optuna-dashboard", "psycopg", "playwright"} <= set(dev)
    assert all(dev[k] == v for k, v in runtime.items() if k in dev), "dev pins must repeat the runtime pins"


def test_every_range_in_pyproject_is_pinned() -> None:
    """A dependency added to pyproject.toml without regenerating the pins fails here."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    assert names(project["dependencies"]) <= set(_pins("requirements.txt"))
    extras = project["optional-dependencies"]
    assert names(extras["postgres"]) | names(extras["browser"]) <= names(extras["dev"])
    assert names(project["dependencies"]) | names(extras["dev"]) <= set(_pins("requirements-dev.txt"))


@pytest.mark.slow
def test_wheel_installs_and_its_console_scripts_run_a_search(tmp_path: Path) -> None:
    """`pip wheel .`, installed into a fresh venv that sees the system's torch, then `strokect-search` for real."""
    src = tmp_path / "src"  # building in the checkout would leave build/ and *.egg-info behind
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "leaderboards", ".cache", "tests", "__pycache__", "*.egg-info", "build", "screenshots"))
    (src / "leaderboards").mkdir()
    # --no-build-isolation: the installed setuptools (a pinned dependency of torch) builds it, no download
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("strokect_automl-0.2.0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    tops = {n.split("/")[0] for n in names if not n.startswith("strokect_automl-")}
    assert tops == {"app.py", "automl", "data", "models", "ui"}, tops
    assert "automl/search.py" in names and "models/export.py" in names
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points

    venv = tmp_path / "venv"
    # --without-pip: the venv's own old setuptools would shadow the system's one that torch requires; the
    # system pip (seen through --system-site-packages) installs into the venv
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=300)
    # --no-index: every dependency must already be satisfied by the system site-packages (no download)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", str(wheel)], check=True,
                   timeout=600)

    work = tmp_path / "work"  # not the checkout: imports must come from the installed wheel
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("STROKECT_")}
    env.update(STROKECT_CACHE=str(tmp_path / "cache"), STROKECT_NO_PROGRESS="1", HF_HUB_OFFLINE="1")

    def run(*argv: str | Path, timeout: int = 600) -> str:
        result = subprocess.run([str(a) for a in argv], cwd=work, env=env, capture_output=True, text=True,
                                timeout=timeout)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    site = run(venv / "bin" / "python", "-c", "import app, automl; print(automl.__file__); print(app.__file__)")
    assert all(Path(line).is_relative_to(venv) for line in site.split()), site
    out = tmp_path / "lb"
    printed = run(venv / "bin" / "strokect-search", "--preset", "smoke", "--study", "x", "--leaderboards", out, "-q")
    assert printed.strip().splitlines()[-1] == str(out / "x")
    assert (out / "x" / "leaderboard.csv").is_file() and (out / "x" / "study.journal").is_file()
    assert run(venv / "bin" / "strokect-leaderboard", "--study", "x", "--leaderboards", out, "--no-refit", "--no-audit").strip()
    assert "leaderboard" in run(venv / "bin" / "python", "-m", "automl.search", "--help")  # python -m still works
    assert "streamlit run" in run(venv / "bin" / "strokect-app", "--help").replace("\n", " ")
