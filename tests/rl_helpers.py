"""What the `aif rl` tests share: a prompt file, one run of the stage from a test's settings, and reading its
metrics and checkpoint weights back."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from aifeedback.config import build_config
from aifeedback.stages import STAGES
from aifeedback.stages.rl_config import RLConfig

PROMPTS = "a red apple\na blue car\na green tree\n"


def prompt_file(folder: Path, text: str = PROMPTS) -> Path:
    path = folder / "prompts.txt"
    path.write_text(text)
    return path


def run_rl(values: dict, prompts: Path, out: Path, **kw) -> Path:
    """`aif rl` with the test's `values`, the prompt file and `kw` over them; returns the run folder."""
    return STAGES["rl"].run(build_config(RLConfig, dict(values, prompts=str(prompts), out=str(out), **kw)))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def lora(out: Path, epoch: int) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoints" / f"checkpoint-{epoch:06d}" / "pytorch_lora_weights.safetensors")


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
