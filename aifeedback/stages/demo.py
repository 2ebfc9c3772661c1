"""`aif demo`: the whole AI-feedback loop on the toy model, offline, in a few minutes on a CPU.

    toy captions -> aif generate (K images each) -> aif score --scorer redness --pairing best-worst
                 -> aif train --data ai (Diffusion-DPO, or --loss) -> aif eval (base vs tuned, held-out captions)

Every step is the real stage, called through its public `run(Config)`, on `toy-sd15` (see `aifeedback.zoo.toy`), a
StableDiffusionPipeline pretrained on coloured discs on first use, or with `--model toy-sd3` on its flow-matching
twin (`aifeedback.zoo.toy_sd3`, a StableDiffusion3Pipeline: the sd3 family's Flow-DPO objective). The reward is
redness, so the tuned model should draw redder images than its base on captions it was never trained on; `aif eval`
measures how often it does, and its toy-fidelity scorer how often each model still draws the colours the caption
names (reward hacking shows there).
Each stage's output folder is an ordinary stage output: a rerun resumes or reuses it, and OUT/commands.txt lists the
`aif` commands that reproduce the demo stage by stage. --swap-labels trains on the same pairs with winner and loser
swapped (OUT/pairs-swapped/): the check that an objective follows its labels, the tuned model should then lose.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from aifeedback.config import build_config, fields
from aifeedback.console import finish, nested, quiet_libraries
from aifeedback.data.labels import UNPAIRED_DIR
from aifeedback.dist import process_state
from aifeedback.families.resolve import resolve_model
from aifeedback.losses import LOSSES
from aifeedback.stages import STAGES
from aifeedback.stages.demo_config import DemoConfig
from aifeedback.storage.files import atomic_write_text, read_json, write_json
from aifeedback.storage.manifest import fingerprint
from aifeedback.storage.publish import publishing
from aifeedback.zoo.toy_world import SIZE, toy_prompts

FIDELITY = "toy-fidelity"  # does an image show its caption's colours? A reward bought with fidelity shows here
SWAPPED = "pairs-swapped"  # --swap-labels: the pairs with winner and loser exchanged


def stage_configs(cfg: DemoConfig) -> dict[str, Any]:
    """The configs of the stages the demo runs (generate, score, train, eval, in that order), by stage name."""

    out = Path(cfg.out)
    unpaired = LOSSES[cfg.loss].unpaired  # kto trains on the per-image labels of the same score output
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
            # also per image (desirable: the redder half of each caption's K) for unpaired losses (kto): one score
            # output serves every objective
            "unpaired": True, "out": str(out / "pairs"), "overwrite": cfg.overwrite, "progress": cfg.progress},
        "train": {
            "data": "ai", "dataset": str(out / pairs_folder(cfg) / (UNPAIRED_DIR if unpaired else "")),
            "model": cfg.model, "resolution": SIZE,
            "loss": cfg.loss, "beta": cfg.train_beta(), "lr": cfg.train_lr(), "scale_lr": False, "weight_decay": 0.0,
            "max_grad_norm": 0.0, "max_steps": cfg.train_steps,
            "batch_size": cfg.batch_size, "seed": cfg.seed, "checkpoint_every": cfg.train_steps,
            "keep_checkpoints": 1, "validation_every": 0, "num_workers": 0, "trackers": "none",
            "out": str(out / cfg.run_name("train")), "overwrite": cfg.overwrite, "progress": cfg.progress},
        "eval": {
            "base": cfg.model, "tuned": str(out / cfg.run_name("train")), "prompts": str(out / "prompts" / "eval.txt"),
            "seeds_per_prompt": cfg.eval_seeds, "seed": cfg.seed + 1,
            "scorers": list(dict.fromkeys([cfg.scorer, "redness", "brightness", "saturation", FIDELITY])),
            "out": str(out / cfg.run_name("eval")), **common},
    }
    return {stage: build_config(STAGES[stage].config, v, f"demo -> {stage}") for stage, v in values.items()}


def pairs_folder(cfg: DemoConfig) -> str:
    return SWAPPED if cfg.swap_labels else "pairs"


def swap_labels(src: Path, dst: Path) -> Path:
    """A copy of the `aif score` output src in dst with label_0 and label_1 exchanged in every pair (the winner
    becomes the loser) and every unpaired image's `desirable` flag inverted, published atomically. Its manifest
    fingerprint is derived from src's, so a training run on it is never taken for one on src."""
    with publishing(dst, folder=True, replace=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        for shard in sorted((tmp / "data").glob("*.parquet")):
            t = pq.read_table(shard)
            i0, i1 = t.schema.get_field_index("label_0"), t.schema.get_field_index("label_1")
            l0, l1 = t.column(i0), t.column(i1)
            pq.write_table(t.set_column(i0, "label_0", l1).set_column(i1, "label_1", l0), shard)
        for shard in sorted((tmp / UNPAIRED_DIR).glob("*.parquet")):
            t = pq.read_table(shard)
            i = t.schema.get_field_index("desirable")
            pq.write_table(t.set_column(i, "desirable", pc.invert(t.column(i))), shard)
        manifest = read_json(tmp / "manifest.json")
        manifest["fingerprint"] = fingerprint({"swapped_labels_of": manifest.get("fingerprint")})
        write_json(tmp / "manifest.json", manifest)
    return dst


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
        lines = [command_line(s, c) for s, c in configs.items()]
        if cfg.swap_labels:  # not a stage: say what the train line's dataset is
            lines.insert(2, f"# {SWAPPED}/: pairs/ with label_0 and label_1 exchanged (aif demo --swap-labels)")
        atomic_write_text(Path(cfg.out) / "commands.txt", "\n".join(lines) + "\n")
    state.wait_for_everyone()
    for i, (stage, stage_cfg) in enumerate(configs.items(), 1):
        say(f"[demo] {i}/{len(configs)} {stage} ({time.time() - start:.0f}s): {command_line(stage, stage_cfg)}")
        with nested():  # the stage's summary says what it wrote; the demo itself says what comes next
            report = STAGES[stage].run(stage_cfg)  # the last one, eval, returns the report (on the main process)
        if stage == "score" and cfg.swap_labels:
            if main:
                say(f"[demo] winner and loser swapped: {swap_labels(Path(stage_cfg.out), Path(cfg.out) / SWAPPED)}")
            state.wait_for_everyone()
    if main:
        print(summary(report, cfg, Path(cfg.out), time.time() - start))
        report_html = Path(cfg.out) / cfg.run_name("eval") / "report.html"
        finish("demo", cfg.out, f"prompts/, generate/, {pairs_folder(cfg)}/, {cfg.run_name('train')}/, "
               f"{cfg.run_name('eval')}/ and commands.txt", f"open {report_html}",
               f"rerun or vary one stage with its line in {Path(cfg.out) / 'commands.txt'}")
    return report


def summary(report: dict[str, Any], cfg: DemoConfig, out: Path, seconds: float) -> str:
    """The demo's closing table: per scorer, how often the tuned image beats its base twin."""
    lines = [
        "",
        f"Tuned ({cfg.train_steps} {cfg.loss} steps on {cfg.scorer} "
        f"{'desirable/undesirable images' if LOSSES[cfg.loss].unpaired else 'best-vs-worst pairs'}"
        f"{', labels SWAPPED' if cfg.swap_labels else ''}) vs base, on "
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
              f"Report (base and tuned side by side): {out / cfg.run_name('eval') / 'report.html'}",
              f"Stage commands: {out / 'commands.txt'}; done in {seconds:.0f}s"]
    return "\n".join(lines)
