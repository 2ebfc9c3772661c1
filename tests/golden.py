"""Golden outputs: one tiny run of every stage through the command line, reduced to comparable arrays.

`python -m tests.golden record` writes them to tests/golden/ (the behaviour of the code at that commit);
tests/test_golden.py runs the same commands and compares. Recorded before the package was reorganised into
families/stages/storage, so the test shows that the move kept every stage's behaviour.

What is compared: generated and sampled pixels, score values and labels, the final weights of a 3-step LoRA DPO run
(tiny-sdxl) and a 3-step full DPO run (tiny-sd15), the exported LoRA tensors, and eval's report.json numbers.
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
