"""How far the golden outputs (tests/golden.py) move under another CPU kernel set.

    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 \\
        python -m bench.isa_spread run OUT.pt        # the golden pipeline under that kernel set, dumped to OUT.pt
    python -m bench.isa_spread compare OUT.pt ...    # each dump's largest deviations from the recording

`run` builds its own tiny models (a fresh AIF_CACHE in a temporary folder unless AIF_CACHE is set), as a new machine
does. `compare` prints, per group of compared tensors (pixels, scores, weights) and per eval number, the largest
absolute and relative deviation and the tolerance tests/test_golden.py allows, so the margin can be read off.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

KERNEL_VARS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def run(out: Path) -> None:
    from tests.golden import run_all

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault("AIF_CACHE", str(Path(d) / "cache"))
        work = Path(d) / "work"
        work.mkdir()
        tensors, values = run_all(work)
    kernels = {k: os.environ.get(k, "") for k in KERNEL_VARS}
    torch.save({"tensors": tensors, "values": values, "kernels": kernels}, out)


def _group(name: str) -> str:
    if name.endswith("pixels"):
        return name
    return "score" if name.startswith("score/") else name.split("/")[0] + " weights"


def deviations(tensors: dict, values: dict) -> dict[str, tuple[float, float]]:
    """{group or eval number: (max abs deviation, max relative deviation)} from the recording in tests/golden/."""
    from safetensors.torch import load_file

    from tests.golden import FOLDER

    expected = load_file(str(FOLDER / "outputs.safetensors"))
    out: dict[str, tuple[float, float]] = {}
    for name, want in expected.items():
        diff = (tensors[name].double() - want.double()).abs()
        rel = diff / want.double().abs().clamp_min(1e-12)
        group = _group(name)
        a, r = out.get(group, (0.0, 0.0))
        out[group] = (max(a, float(diff.max())), max(r, float(rel.max()) if group == "score" else 0.0))
    recorded = json.loads((FOLDER / "outputs.json").read_text())["eval"]
    for scorer, stats in recorded.items():
        for key in ("win_rate", "mean_base", "mean_tuned"):
            d = abs(values["eval"][scorer][key] - stats[key])
            out[f"eval {scorer} {key}"] = (d, d / max(abs(stats[key]), 1e-12))
    return out


def compare(paths: list[Path]) -> None:
    from tests.golden import differences

    for path in paths:
        dump = torch.load(path, weights_only=True)
        print(f"{path}: {' '.join(f'{k}={v}' for k, v in dump['kernels'].items() if v) or 'native kernels'}")
        for key, (a, r) in deviations(dump["tensors"], dump["values"]).items():
            print(f"  {key:40s} abs {a:.3g}  rel {r:.3g}")
        for problem in differences(dump["tensors"], dump["values"]):
            print(f"  beyond the tolerances of tests/golden.py: {problem}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(Path(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "compare":
        compare([Path(p) for p in sys.argv[2:]])
    else:
        sys.exit(__doc__)
