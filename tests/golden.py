"""Golden outputs: one tiny run of every stage through the command line, reduced to comparable arrays.

`python -m tests.golden record` writes them to tests/golden/ (the behaviour of the code at that commit);
tests/test_golden.py runs the same commands and compares. Recorded before the package was reorganised into
families/stages/storage, so the test shows that the move kept every stage's behaviour.

What is compared: generated and sampled pixels, score values and labels, the final weights of a 3-step LoRA DPO run
(tiny-sdxl) and a 3-step full DPO run (tiny-sd15), the exported LoRA tensors, and eval's report.json numbers.

On the recording machine (an AMD EPYC with AVX-512) the outputs are bitwise equal. Other CPUs round float kernels
differently; `differences` allows what that moved across the kernel sets CI emulates (`make test-isa`; measured
with `python -m bench.isa_spread` on that EPYC, 2026-12-07, each set building its own tiny models: AVX-512, AVX2 and
SSE4.1 for oneDNN, MKL and ATen together, and oneDNN / MKL / ATen at AVX2 one at a time) and nothing a behaviour
change would: the numbers measured are written next to each tolerance.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

FOLDER = Path(__file__).resolve().parent / "golden"
PROMPTS = ["a red cube on a table", "a blue bird in the sky", "a green tree by a lake"]


def aif(*args: str) -> None:
    """Run `aif ARGS` in this process, as the console script does."""
    from aifeedback.cli import app

    app(list(args), prog_name="aif", standalone_mode=False)


def _pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for shard in sorted((folder / "data").glob("*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    return rows


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in sorted(load_file(str(path)).items())}


def run_all(work: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Run every stage once on tiny models; returns (tensors, json-able values)."""
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    gen, pairs = work / "gen", work / "pairs"
    common = ["--steps", "2", "--resolution", "16", "--batch-size", "2"]
    aif("generate", "--model", "tiny-sdxl", "--prompts", str(prompts), "--images-per-prompt", "3", *common,
        "--shard-size", "4", "--save-latents", "--out", str(gen))
    aif("score", "--input", str(gen), "--out", str(pairs), "--scorer", "redness,pickscore:tiny", "--workers", "0",
        "--batch-size", "4", "--no-progress")
    train = ["train", "--data", "ai", "--dataset", str(pairs), "--max-steps", "3", "--batch-size", "2", "--lr", "1e-4",
             "--no-scale-lr", "--checkpoint-every", "3", "--validation-every", "0", "--num-workers", "0",
             "--trackers", "none", "--resolution", "16"]
    aif(*train, "--model", "tiny-sdxl", "--lora-rank", "4", "--out", str(work / "lora"))
    aif(*train, "--model", "tiny-sd15", "--out", str(work / "full"))
    aif("export", str(work / "lora"), "--out", str(work / "export"))
    aif("sample", "--model", "tiny-sdxl", "--tuned", str(work / "export"), "--prompts", str(prompts), "--limit", "2",
        "--steps", "2", "--resolution", "16", "--no-grid", "--out", str(work / "sample"))
    aif("eval", "--base", "tiny-sd15", "--tuned", str(work / "full"), "--prompts", str(prompts), "--seeds-per-prompt",
        "2", "--steps", "2", "--resolution", "16", "--scorers", "redness,clip:tiny", "--bootstrap", "200",
        "--thumb", "32", "--out", str(work / "eval"))
    return _collect(work)


def _collect(work: Path) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    gen_rows = sorted(_rows(work / "gen"), key=lambda r: (r["prompt_id"], r["k"]))
    tensors["generate/pixels"] = torch.from_numpy(np.stack([_pixels(r["image"]) for r in gen_rows]))
    pair_rows = sorted(_rows(work / "pairs"), key=lambda r: r["prompt_id"])
    tensors["score/scores"] = torch.tensor([[r["score_0"], r["score_1"]] for r in pair_rows], dtype=torch.float64)
    for name, w in _weights(work / "lora/checkpoints/checkpoint-000003/pytorch_lora_weights.safetensors").items():
        tensors[f"lora/{name}"] = w
    unet = work / "full/checkpoints/checkpoint-000003/unet/diffusion_pytorch_model.safetensors"
    for name, w in _weights(unet).items():
        tensors[f"full/{name}"] = w
    for name, w in _weights(work / "export/pytorch_lora_weights.safetensors").items():
        tensors[f"export/{name}"] = w
    samples = sorted((work / "sample" / "train").glob("*.png"))  # the imagefolder layout of aif sample
    tensors["sample/pixels"] = torch.from_numpy(np.stack([_pixels(p.read_bytes()) for p in samples]))
    report = json.loads((work / "eval" / "report.json").read_text())
    values = {
        "generate": [[r["prompt_id"], r["prompt"], r["k"], r["seed"], r["width"], r["height"], r["latent_shape"]]
                     for r in gen_rows],
        "score": [[r["prompt_id"], r["caption"], r["label_0"], r["label_1"], r["seed_0"], r["seed_1"]]
                  for r in pair_rows],
        "sample": [p.name for p in samples],
        "eval": {name: {k: s[k] for k in ("n", "wins", "ties", "losses", "win_rate", "mean_base", "mean_tuned")}
                 for name, s in report["scorers"].items()},
    }
    return tensors, values


# Pixels, in 8-bit levels: measured 0 under every kernel set; a latent that moves by rounding can move a JPEG's
# pixels by a level or two (tests/test_generate.py), and a behaviour change moves most pixels by many levels.
PIXEL_LEVELS = 4
PIXEL_MEAN = 0.5
# Scores (pickscore:tiny, redness), relative: measured 1.6e-5 at most (ATen at AVX2; 1.3e-5 absolute), 6x below this.
SCORE_RTOL, SCORE_ATOL = 1e-4, 1e-6
# Trained and exported weights, per group (lora/, full/, export/). Adam moves each weight by about lr = 1e-4 a step
# whatever its gradient's size, so a weight whose gradient is near 0 can take a step of another sign under other
# rounding: single weights moved by up to 5.0e-5 (full run, ATen at AVX2; 2.5e-5 in the LoRA, all at AVX2, where the
# fresh-machine report saw > 1e-5), 2x below WEIGHT_MAX, one step. Over a group the rounding is tiny: root mean
# square 2.7e-7 at most (LoRA, all at AVX2; full run 1.1e-7), 3.7x below WEIGHT_RMS. The 3 steps move the weights by
# 1.9e-4 root mean square (measured), so a change to the data, noise, loss or optimiser that alters even 1 in 1000
# weights by one step (root mean square 3.2e-6) fails.
WEIGHT_MAX, WEIGHT_RMS = 1e-4, 1e-6
# eval's means, relative to what one scorer can resolve. clip:tiny (a cosine near 0.22): measured 2.3e-5 relative at
# most (oneDNN at AVX2), 4x below 1e-4; training moved its mean by 4.9e-4 relative. redness is a mean of 8-bit
# pixels: one level of one R value in one of the 6 16x16 images moves it by 1 / (255 * 256 * 6) = 2.55e-6, one of G
# or B by half that. Measured: one such level at most (2.55e-6, all at AVX2; 1.28e-6 on a Zen 3 without AVX-512,
# where rel 1e-4 of a mean near 0 failed). Allowed: two levels; training moved the mean by 6.4e-6 (2.5 levels).
REDNESS_LEVEL = 1 / (255 * 16 * 16 * 6)
EVAL_TOLERANCE = {"clip:tiny": {"rel": 1e-4, "abs": 0.0}, "redness": {"rel": 0.0, "abs": 2 * REDNESS_LEVEL}}


def _group(name: str) -> str:
    return name if name.endswith("pixels") else name.split("/")[0]


def differences(tensors: dict[str, torch.Tensor], values: dict) -> list[str]:
    """What differs from the recording beyond the tolerances above (empty when the outputs match)."""
    from safetensors.torch import load_file

    expected = load_file(str(FOLDER / "outputs.safetensors"))
    if sorted(tensors) != sorted(expected):
        return [f"tensor names differ: {sorted(set(tensors) ^ set(expected))}"]
    problems = [f"{name}: shape {tuple(tensors[name].shape)}, recorded {tuple(want.shape)}"
                for name, want in expected.items() if tensors[name].shape != want.shape]
    if problems:
        return problems
    weights: dict[str, list[torch.Tensor]] = {}
    for name, want in expected.items():
        got = tensors[name]
        if name.endswith("pixels"):
            diff = (got.int() - want.int()).abs()
            if diff.max() > PIXEL_LEVELS or diff.float().mean() >= PIXEL_MEAN:
                problems.append(f"{name}: up to {int(diff.max())} levels, mean {float(diff.float().mean()):.3f}")
        elif name.startswith("score/"):
            if not torch.allclose(got, want, rtol=SCORE_RTOL, atol=SCORE_ATOL):
                problems.append(f"{name}: up to {float((got - want).abs().max()):.3g} apart")
        else:
            weights.setdefault(_group(name), []).append((got.double() - want.double()).flatten())
    for group, diffs in weights.items():
        diff = torch.cat(diffs)
        top, rms = float(diff.abs().max()), float(diff.pow(2).mean().sqrt())
        if top > WEIGHT_MAX or rms > WEIGHT_RMS:
            problems.append(f"{group} weights: up to {top:.3g} apart (allowed {WEIGHT_MAX}), root mean square "
                            f"{rms:.3g} (allowed {WEIGHT_RMS})")
    return problems + _eval_differences(values)


def _eval_differences(values: dict) -> list[str]:
    recorded = json.loads((FOLDER / "outputs.json").read_text())
    if values.keys() != recorded.keys() or values["eval"].keys() != recorded["eval"].keys():
        return [f"stages or scorers differ: {sorted(values)} {sorted(values['eval'])}"]
    problems = [f"{stage}: rows differ from the recording" for stage in ("generate", "score", "sample")
                if json.loads(json.dumps(values[stage])) != recorded[stage]]
    for scorer, stats in recorded["eval"].items():
        got = values["eval"][scorer]
        for key in ("n", "wins", "ties", "losses"):
            if got[key] != stats[key]:
                problems.append(f"eval {scorer} {key}: {got[key]}, recorded {stats[key]}")
        for key in ("win_rate", "mean_base", "mean_tuned"):
            tol = EVAL_TOLERANCE[scorer]
            if abs(got[key] - stats[key]) > tol["abs"] + tol["rel"] * abs(stats[key]):
                problems.append(f"eval {scorer} {key}: {got[key]!r}, recorded {stats[key]!r}")
    return problems


def record(work: Path) -> None:
    from safetensors.torch import save_file

    tensors, values = run_all(work)
    FOLDER.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(FOLDER / "outputs.safetensors"))
    (FOLDER / "outputs.json").write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    if sys.argv[1:] != ["record"]:
        sys.exit("usage: python -m tests.golden record")
    with tempfile.TemporaryDirectory() as d:
        record(Path(d))
