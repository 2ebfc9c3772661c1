"""`aif demo`: the whole AI-feedback loop on the toy model, offline, in a few minutes on a CPU.

    toy captions -> aif generate (K images each) -> aif score --scorer redness --pairing best-worst
                 -> aif train --data ai (Diffusion-DPO) -> aif eval (base vs tuned, held-out captions and seeds)

Every step is the real stage, called through its public `run(Config)`, on `toy-sd15` (see `aifeedback.zoo.toy`), a
StableDiffusionPipeline pretrained on coloured discs on first use, or with `--model toy-sd3` on its flow-matching
twin (`aifeedback.zoo.toy_sd3`, a StableDiffusion3Pipeline: the sd3 family's Flow-DPO objective). The reward is
redness, so the tuned model should draw redder images than its base on captions it was never trained on; `aif eval`
measures how often it does, and its toy-fidelity scorer how often each model still draws the colours the caption
names (reward hacking shows there).
Each stage's output folder is an ordinary stage output: a rerun resumes or reuses it, and OUT/commands.txt lists the
`aif` commands that reproduce the demo stage by stage.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from aifeedback.config import build_config, fields
from aifeedback.console import finish, nested, quiet_libraries
from aifeedback.dist import process_state
from aifeedback.families.resolve import resolve_model
from aifeedback.stages import STAGES
from aifeedback.stages.demo_config import DemoConfig
from aifeedback.storage.files import atomic_write_text
from aifeedback.zoo.toy_world import SIZE, toy_prompts

FIDELITY = "toy-fidelity"  # does an image show its caption's colours? A reward bought with fidelity shows here


def stage_configs(cfg: DemoConfig) -> dict[str, Any]:
    """The configs of the stages the demo runs (generate, score, train, eval, in that order), by stage name."""

    out = Path(cfg.out)
    # float32 everywhere (also on a GPU, where generate would default to float16): the toy model costs nothing.
    common = {"steps": cfg.sampling_steps, "guidance": cfg.guidance, "dtype": "float32", "batch_size": 64,
              "overwrite": cfg.overwrite, "progress": cfg.progress}
    values = {
        "generate": {
            "model": cfg.model, "prompts": str(out / "prompts" / "train.txt"),
            "images_per_prompt": cfg.images_per_prompt, "seed": cfg.seed, "image_format": "png", "save_latents": True,
            "out": str(out / "generate"), **common},
        "score": {
            "input": str(out / "generate"), "scorer": [cfg.scorer], "pairing": "best-worst", "workers": 0,
            "out": str(out / "pairs"), "overwrite": cfg.overwrite, "progress": cfg.progress},
        "train": {
            "data": "ai", "dataset": str(out / "pairs"), "model": cfg.model, "resolution": SIZE, "beta": cfg.beta,
            "lr": cfg.lr, "scale_lr": False, "weight_decay": 0.0, "max_grad_norm": 0.0, "max_steps": cfg.train_steps,
            "batch_size": cfg.batch_size, "seed": cfg.seed, "checkpoint_every": cfg.train_steps,
            "keep_checkpoints": 1, "validation_every": 0, "num_workers": 0, "trackers": "none",
            "out": str(out / "dpo"), "overwrite": cfg.overwrite, "progress": cfg.progress},
        "eval": {
            "base": cfg.model, "tuned": str(out / "dpo"), "prompts": str(out / "prompts" / "eval.txt"),
            "seeds_per_prompt": cfg.eval_seeds, "seed": cfg.seed + 1,
            "scorers": list(dict.fromkeys([cfg.scorer, "redness", "brightness", "saturation", FIDELITY])),
            "out": str(out / "eval"), **common},
    }
    return {stage: build_config(STAGES[stage].config, v, f"demo -> {stage}") for stage, v in values.items()}


def write_prompts(cfg: DemoConfig) -> None:
    """OUT/prompts/train.txt and eval.txt: disjoint toy captions, one per line."""

    captions = toy_prompts(cfg.prompts + cfg.eval_prompts, seed=cfg.seed)
    out = Path(cfg.out) / "prompts"
    atomic_write_text(out / "train.txt", "\n".join(captions[: cfg.prompts]) + "\n")
    atomic_write_text(out / "eval.txt", "\n".join(captions[cfg.prompts :]) + "\n")


def command_line(stage: str, stage_cfg: Any) -> str:
    """The `aif STAGE ...` command that runs stage_cfg: every setting that differs from the stage's default."""

    args = []
    for f, _ in fields(type(stage_cfg)):
        value = getattr(stage_cfg, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == default:
            continue
        flag = f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            args.append(f"--{flag} {','.join(map(str, value)) if isinstance(value, list) else value}")
    return f"aif {stage} " + " ".join(args)


def run(cfg: DemoConfig) -> dict[str, Any]:
    """Run generate -> score -> train -> eval on the toy model; print the win rates; return the eval report."""
    cfg.preflight()  # cheap and idempotent: STAGES[name].run checks before the import, direct callers here
    quiet_libraries()
    state = process_state()  # under `accelerate launch`, every stage splits its work across the processes
    main = state.is_main_process
    say = print if main else (lambda *a, **k: None)
    start = time.time()
    path = resolve_model(cfg.model)  # built and pretrained on first use (under a lock), then cached
    took = time.time() - start
    say(f"[demo] toy model {cfg.model}: {path} ({f'built and pretrained in {took:.0f}s' if took > 5 else 'cached'})")
    configs = stage_configs(cfg)
    if main:
        write_prompts(cfg)
        atomic_write_text(
            Path(cfg.out) / "commands.txt", "\n".join(command_line(s, c) for s, c in configs.items()) + "\n"
        )
    state.wait_for_everyone()
    for i, (stage, stage_cfg) in enumerate(configs.items(), 1):
        say(f"[demo] {i}/{len(configs)} {stage} ({time.time() - start:.0f}s): {command_line(stage, stage_cfg)}")
        with nested():  # the stage's summary says what it wrote; the demo itself says what comes next
            report = STAGES[stage].run(stage_cfg)  # the last one, eval, returns the report (on the main process)
    if main:
        print(summary(report, cfg, Path(cfg.out), time.time() - start))
        finish("demo", cfg.out, "prompts/, generate/, pairs/, dpo/, eval/ and commands.txt",
               f"open {Path(cfg.out) / 'eval' / 'report.html'}",
               f"rerun or vary one stage with its line in {Path(cfg.out) / 'commands.txt'}")
    return report


def summary(report: dict[str, Any], cfg: DemoConfig, out: Path, seconds: float) -> str:
    """The demo's closing table: per scorer, how often the tuned image beats its base twin."""
    lines = [
        "",
        f"Tuned ({cfg.train_steps} DPO steps on {cfg.scorer} best-vs-worst pairs) vs base, on "
        f"{cfg.eval_prompts} held-out captions x {cfg.eval_seeds} seeds (same seed for both twins):",
        f"  {'scorer':<12} {'tuned wins':>10}  {'95% CI':<13} mean base -> tuned",
    ]
    for name, s in report["scorers"].items():
        if name == FIDELITY != cfg.scorer:
            continue  # a 0/1 score: its mean (below) says more than a win rate made mostly of ties
        ci = f"{100 * s['ci_low']:.1f}-{100 * s['ci_high']:.1f}%"
        role = "  (the reward)" if name == cfg.scorer else ""
        means = f"{s['mean_base']:.3f} -> {s['mean_tuned']:.3f}"
        lines.append(f"  {name:<12} {100 * s['win_rate']:>9.1f}%  {ci:<13} {means}{role}")
    fid = report["scorers"][FIDELITY]
    lines += [(f"Prompt fidelity (disc and background in the captioned colours): base {100 * fid['mean_base']:.1f}% "
               f"-> tuned {100 * fid['mean_tuned']:.1f}%"),
              f"Report (base and tuned side by side): {out / 'eval' / 'report.html'}",
              f"Stage commands: {out / 'commands.txt'}; done in {seconds:.0f}s"]
    return "\n".join(lines)
