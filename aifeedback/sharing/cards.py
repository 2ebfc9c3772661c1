"""README.md cards: a model card next to every `aif export`, a dataset card next to every `aif score` output.

Each card starts with YAML front matter between `---` lines (the metadata the Hugging Face hub reads: base_model,
library_name, tags, dataset configs) followed by a Markdown body that says what the files are and how to load them.
Light on purpose (no torch): the facts come from the run's config.yaml, manifest.json and the stage's summaries.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from aifeedback.errors import AifError
from aifeedback.storage.checkpoints import denoiser_dir
from aifeedback.storage.files import atomic_write_bytes, read_json

CARD = "README.md"
SAMPLE_GRID = "sample_grid.png"


def render(meta: dict[str, Any], body: str) -> str:
    """A card: YAML front matter, then the Markdown body."""
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n\n{body.strip()}\n"


def front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata of a card (the part between the first two `---` lines)."""
    if not text.startswith("---\n"):
        raise ValueError("a card starts with a '---' line")
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0])


def _write(out: Path, text: str) -> Path:
    atomic_write_bytes(out / CARD, text.encode())
    return out / CARD


# ---- model card (aif export) ----

def training_facts(ckpt: Path) -> dict[str, Any]:
    """What the card says about training, from RUN/config.yaml, RUN/manifest.json and the checkpoint's state."""
    run = ckpt.parent.parent  # RUN/checkpoints/checkpoint-N -> RUN
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    manifest = read_json(run / "manifest.json") if (run / "manifest.json").exists() else {}
    state = read_json(ckpt / "trainer_state.json") if (ckpt / "trainer_state.json").exists() else {}
    step = state.get("step")
    per_step = cfg.get("batch_size", 1) * cfg.get("grad_accum", 1) * state.get("processes", 1)
    return {
        "run": run, "model": cfg.get("model"), "dataset": cfg.get("dataset"), "data": cfg.get("data"),
        "split": cfg.get("split"), "loss": cfg.get("loss"), "beta": cfg.get("beta"), "lr": cfg.get("lr"),
        "lora_rank": cfg.get("lora_rank"), "steps": step, "prompt": (cfg.get("validation_prompts") or [""])[0],
        "pairs_seen": step * per_step if step is not None else None,
        "dataset_pairs": manifest.get("counts", {}).get("pairs"),
    }


def _hub_id(name: Any) -> bool:
    """Whether name reads as a hub repo id (owner/name) rather than a local path or a built-in tiny model."""
    return isinstance(name, str) and bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def eval_win_rates(eval_dir: str | Path) -> dict[str, Any]:
    """An `aif eval` output's win rates per scorer (report.json) and the --tuned it compared."""
    report_path = Path(eval_dir) / "report.json"
    if not report_path.is_file():
        raise AifError(f"--eval {eval_dir}: no report.json there; pass a finished `aif eval` output folder")
    report = read_json(report_path)
    manifest = read_json(Path(eval_dir) / "manifest.json") if (Path(eval_dir) / "manifest.json").exists() else {}
    rates = {name: {k: s[k] for k in ("win_rate", "ci_low", "ci_high", "n")}
             for name, s in report.get("scorers", {}).items()}
    return {"tuned": manifest.get("config", {}).get("tuned"), "n_prompts": report.get("n_prompts"), "scorers": rates}


def copy_latest_grid(run: Path, out: Path) -> str | None:
    """Copy the run's newest validation grid next to the card; its file name, or None when the run drew none."""
    grids = sorted((run / "validation").glob("step-*.png"))
    if not grids:
        return None
    shutil.copyfile(grids[-1], out / SAMPLE_GRID)
    return SAMPLE_GRID


def write_model_card(out: Path, ckpt: Path, kind: str, fmt: str, eval_dir: str | None = None) -> Path:
    """OUT/README.md (and OUT/sample_grid.png when the run has a validation grid) for an exported model.

    kind: 'lora' or 'full' (the checkpoint); fmt: 'diffusers', 'kohya' or 'pipeline' (what the export wrote)."""
    facts = training_facts(ckpt)
    evals = eval_win_rates(eval_dir) if eval_dir else None
    grid = copy_latest_grid(facts["run"], out)
    base = facts["model"] or "BASE_MODEL"
    lora = kind == "lora" and fmt != "pipeline"  # a pipeline export has the LoRA fused into the denoiser
    tags = ["text-to-image", "diffusers", "dpo", "aifeedback"] + (["lora"] if lora else [])
    meta: dict[str, Any] = {"base_model": base, "library_name": "diffusers", "tags": tags,
                            "license": "other", "license_name": "same-as-base-model"}
    if _hub_id(base):
        meta["license_link"] = f"https://huggingface.co/{base}"
    if _hub_id(facts["dataset"]):  # the hub's metadata names hub datasets; a local folder is named in the body only
        meta["datasets"] = [facts["dataset"]]
    meta["training"] = {k: facts[k] for k in ("loss", "beta", "lr", "steps", "pairs_seen", "lora_rank")}
    if evals:
        meta["eval_win_rates"] = {name: s["win_rate"] for name, s in evals["scorers"].items()}
    if grid:
        meta["widget"] = [{"text": facts["prompt"], "output": {"url": grid}}]
    return _write(out, render(meta, _model_body(facts, kind, fmt, evals, grid, denoiser_dir(ckpt))))


def _model_body(facts: dict[str, Any], kind: str, fmt: str, evals: dict | None, grid: str | None,
                denoiser: Path | None = None) -> str:
    base = facts["model"] or "BASE_MODEL"
    what = "LoRA adapter" if kind == "lora" else "Fine-tune"
    usable = f", {facts['dataset_pairs']} usable pairs" if facts["dataset_pairs"] is not None else ""
    lines = [f"# {what} of {base}, aligned with Diffusion-DPO", "",
             f"A {what.lower()} of `{base}`, trained by aifeedback on preference pairs (Diffusion-DPO).", "",
             f"**License:** the license of the base model `{base}` applies to these weights.", "",
             "## Training", "", "| setting | value |", "|---|---|",
             f"| training data | {facts['dataset']} ({facts['data']} pairs, split {facts['split']}{usable}) |"]
    lines += [f"| {k.replace('_', ' ')} | {facts[k]} |" for k in ("loss", "beta", "lr", "steps", "pairs_seen")]
    if evals:
        of = f" of `{evals['tuned']}`" if evals["tuned"] else ""
        lines += ["", f"## Evaluation (`aif eval`{of}, {evals['n_prompts']} prompts, vs base)", "",
                  "| scorer | tuned win rate | 95% CI | n |", "|---|---|---|---|"]
        lines += [f"| {n} | {s['win_rate']:.1%} | {s['ci_low']:.1%} - {s['ci_high']:.1%} | {s['n']} |"
                  for n, s in evals["scorers"].items()]
    if grid:
        lines += ["", "## Samples", "", "The run's last validation grid (rows: prompts, columns: seeds):", "",
                  f"![validation grid]({grid})"]
    lines += ["", "## How to use", "", _usage(base, kind, fmt, denoiser)]
    return "\n".join(lines)


def _usage(base: str, kind: str, fmt: str, denoiser: Path | None = None) -> str:
    if fmt == "pipeline":
        return ('```python\nfrom diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained('
                '"REPO_OR_FOLDER")  # the whole pipeline, tuned weights included\n```')
    if fmt == "kohya":
        return ("`pytorch_lora_weights.safetensors` holds the LoRA in the kohya key format (`lora_unet_...`): put it "
                "in ComfyUI's `models/loras/` or A1111's `models/Lora/`. diffusers reads it too:\n\n```python\n"
                f'from diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained("{base}")\n'
                'pipe.load_lora_weights("REPO_OR_FOLDER")\n```')
    if kind == "lora":
        return ("```python\nfrom diffusers import DiffusionPipeline\n\n"
                f'pipe = DiffusionPipeline.from_pretrained("{base}")\npipe.load_lora_weights("REPO_OR_FOLDER")\n'
                'image = pipe("a photo of a cat").images[0]\n```')
    # a full fine-tune: the denoiser under its pipeline component's name (unet/ or transformer/), its own class
    name = denoiser.name if denoiser is not None else "unet"
    cls = read_json(denoiser / "config.json").get("_class_name") if denoiser is not None else None
    cls = cls or "UNet2DConditionModel"
    return (f"```python\nfrom diffusers import DiffusionPipeline, {cls}\n\n"
            f'{name} = {cls}.from_pretrained("REPO_OR_FOLDER", subfolder="{name}")\n'
            f'pipe = DiffusionPipeline.from_pretrained("{base}", {name}={name})\n```')


# ---- dataset card (aif score) ----

def write_dataset_card(out: Path, summary: dict[str, Any]) -> Path:
    """OUT/README.md for an `aif score` output. Its name is not train-*, so the Parquet glob never reads it."""
    counts, labels = summary["counts"], summary["labels"]
    meta = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
        "task_categories": ["text-to-image"],
        "tags": ["preference", "dpo", "ai-feedback", "pickapic-layout", "aifeedback"],
        "size_categories": [_size_category(counts["pairs"])],
    }
    body = [
        "# AI-feedback preference pairs", "",
        "Pairs of images for one prompt, labelled by automatic scorers, in the Pick-a-Pic layout (`caption`, "
        "`jpg_0`, `jpg_1`, `label_0`, `label_1`) that Diffusion-DPO trainers read.", "",
        "| | |", "|---|---|",
        f"| source images | `{summary['input']}` ({_units(summary['kind'], counts['units'])}) |",
        f"| scorers | {', '.join(summary['scorer'])}{_ensemble(summary)} |",
        f"| pairing | {summary['pairing']}, min margin {summary['min_margin']}, ties "
        f"{'kept as 0.5/0.5' if summary['keep_ties'] else 'dropped'} |",
        f"| pairs | {counts['pairs']} ({counts['pairs_decisive']} decisive, {counts['ties_kept']} ties kept, "
        f"{counts['ties_dropped']} ties dropped) |",
        f"| images | {counts['images_scored']} scored, {counts['images_failed']} failed |",
        f"| label balance | jpg_0 wins {labels['0']}, jpg_1 wins {labels['1']}, ties {labels['tie']} |",
        "", "Full statistics (score distributions, scorer agreement) are in `summary.json`.", "",
        "## How to load", "", "```python\nimport datasets\n\n"
        'pairs = datasets.load_dataset("parquet", data_dir="FOLDER", split="train")  # this folder, on disk\n'
        'pairs = datasets.load_dataset("USER/REPO", split="train")  # after aif score --push-to-hub USER/REPO\n```', "",
        "or train on it directly: `aif train --data ai --dataset FOLDER`.",
    ]
    return _write(out, render(meta, "\n".join(body)))


def _units(kind: str, n: int) -> str:
    return f"`aif generate` output, {n} prompts" if kind == "generate" else f"{n} given pairs, relabelled"


def _ensemble(summary: dict[str, Any]) -> str:
    if not summary.get("normalize"):
        return ""
    weights = ", ".join(f"{w:g}" for w in summary["weights"]) or "equal"
    return f" (ensemble: weights {weights}, per-prompt {summary['normalize']} normalisation)"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"
