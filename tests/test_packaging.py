"""A built wheel (what `pip install aifeedback` gets, not the editable checkout) holds every package file the code
reads."""

import shutil
import sys
import zipfile
from pathlib import Path

from tests.launch import run_group

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_package_data_and_recipes(tmp_path):
    # build from a clean copy: a stale build/ folder in the checkout would hide a file the wheel no longer gets
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".whl", "runs", "out"))
    r = run_group([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                   str(tmp_path), str(src)], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("aifeedback-*.whl"))).namelist())
    wanted = {f"aifeedback/{p.relative_to(ROOT / 'aifeedback')}" for p in (ROOT / "aifeedback").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    wanted |= {f"aifeedback/recipes/{p.relative_to(ROOT / 'recipes')}" for p in (ROOT / "recipes").rglob("*.yaml")}
    assert wanted - names == set()
    assert "aifeedback/resources/PartiPrompts.tsv" in names and "aifeedback/recipes/accelerate/ddp_8gpu.yaml" in names
