"""`aif loop`: online AI feedback, R rounds of the ordinary stages, each on the current policy's own samples.

    round r:  aif generate (K images per prompt from the policy: the base in round 1, else round r-1's model)
           -> aif score (the reward; best-vs-worst pairs) -> aif train (from the policy's weights)
           -> aif export --pipeline (round r's model, a whole pipeline folder) -> aif eval (against the base)

Every stage is the real one, called through `STAGES[name].run(cfg)`, into OUT/round-NN/STAGE (see
`stages.loop_rounds`); after each round OUT/report.json and report.html are rewritten (`evaluation.rounds`).

"Train from the current weights": every round exports its model as a whole diffusers pipeline (a LoRA is fused
into the UNet), so the next round's generate loads it as --model like any base model, full fine-tune or LoRA alike.
The DPO reference (--reference):
- base (the default): round r trains with --model the base and resumes round r-1's last checkpoint (--resume PATH,
  --max-steps r x --train-steps): the policy continues from its weights, optimizer state and step count, and the
  reference stays the base model (LoRA: the adapters switched off; full: the frozen copy made before the weights
  load), as in online DPO with a fixed reference;
- previous: round r trains a fresh run with --model round r-1's pipeline, so policy and reference both start from
  it (a new LoRA, or a full copy, on top of it: iterative DPO).
Every eval compares round r's model with the original base on the same held-out prompts and seeds.
A killed loop resumes at the first round and stage whose output is unfinished; each stage itself resumes its
shards or checkpoints.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from aifeedback.config import build_config, identity_dict, save_config, to_dict
from aifeedback.console import finish, nested, quiet_libraries
from aifeedback.dist import process_state
from aifeedback.errors import AifError
from aifeedback.evaluation.rounds import build_loop_report, round_record, write_loop_report
from aifeedback.stages import STAGES
from aifeedback.stages.loop_config import TOY, LoopConfig
from aifeedback.stages.loop_rounds import ROUND_STAGES, finished_rounds, policy, position, stage_dir, stage_done
from aifeedback.storage import checkpoints as ck
from aifeedback.storage.files import atomic_write_text, read_json
from aifeedback.storage.manifest import MANIFEST, fingerprint, finish_output, prepare_output
from aifeedback.storage.shards import shard_files
from aifeedback.zoo.toy_world import toy_prompts

SINGLE_PROCESS = ("export",)  # one process writes the pipeline folder (under accelerate launch the others wait)


def prompt_paths(cfg: LoopConfig) -> tuple[str, str]:
    """The training and held-out prompt sources (OUT/prompts/*.txt when toy)."""
    out = Path(cfg.out) / "prompts"
    return (str(out / "train.txt") if cfg.prompts == TOY else cfg.prompts,
            str(out / "eval.txt") if cfg.eval_prompts == TOY else cfg.eval_prompts)


def write_toy_prompts(cfg: LoopConfig) -> None:
    """OUT/prompts/train.txt and eval.txt from disjoint toy captions (for whichever of the two is toy)."""
    captions = toy_prompts(cfg.toy_prompts + cfg.toy_eval_prompts, seed=cfg.seed)
    train, held_out = prompt_paths(cfg)
    if cfg.prompts == TOY:
        atomic_write_text(train, "\n".join(captions[: cfg.toy_prompts]) + "\n")
    if cfg.eval_prompts == TOY:
        atomic_write_text(held_out, "\n".join(captions[cfg.toy_prompts :]) + "\n")


def generated_size(folder: Path) -> int:
    """The side of the images in a generate output (the training resolution when --resolution is not set)."""
    files = shard_files(folder)
    table = pq.read_table(files[0], columns=["width", "height"]) if files else None
    if table is None or not table.num_rows:
        raise ValueError(f"{folder} holds no images")
    return max(table.column("width")[0].as_py(), table.column("height")[0].as_py())


def train_values(cfg: LoopConfig, r: int) -> dict[str, Any]:
    """aif train's settings in round r (see the module docstring for the two references)."""
    out = Path(cfg.out)
    here = stage_dir(out, r, "train")
    values = {
        "data": "ai", "dataset": str(stage_dir(out, r, "score")), "loss": cfg.loss, "beta": cfg.beta, "lr": cfg.lr,
        "scale_lr": False, "weight_decay": 0.0, "max_grad_norm": 0.0, "batch_size": cfg.batch_size,
        "lora_rank": cfg.lora_rank, "validation_every": 0, "num_workers": 0, "trackers": "none", "keep_checkpoints": 1,
        "resolution": cfg.resolution or generated_size(stage_dir(out, r, "generate")), "out": str(here),
        "progress": cfg.progress,
    }
    if cfg.reference == "previous" or r == 1:
        values.update(model=policy(out, cfg.model, r), seed=cfg.seed + r - 1, max_steps=cfg.train_steps)
    else:
        own = ck.list_checkpoints(here)  # a killed run of this round continues from its own checkpoint
        prev = ck.list_checkpoints(stage_dir(out, r - 1, "train"))
        if not prev:
            raise AifError(f"{stage_dir(out, r - 1, 'train')} has no checkpoint to continue round {r} from "
                           "(--reference base); rerun the loop with --overwrite, or use another --out")
        values.update(model=cfg.model, seed=cfg.seed, max_steps=r * cfg.train_steps,
                      resume="auto" if own else str(prev[-1]))
    values["checkpoint_every"] = values["max_steps"]
    return values


def reward_spec(cfg: LoopConfig) -> str:
    """--scorer as the rounds' score and eval stages load it: NAME:URL with --reward-url."""
    return cfg.served([cfg.scorer], "--scorer")[0]


def stage_values(cfg: LoopConfig, r: int, stage: str) -> dict[str, Any]:
    """The settings of `stage` in round r, as a dict for build_config (train's depend on earlier outputs)."""
    out = Path(cfg.out)
    train_prompts, eval_prompts = prompt_paths(cfg)
    images = {"steps": cfg.sampling_steps, "guidance": cfg.guidance, "dtype": cfg.dtype,
              "batch_size": cfg.image_batch_size, "progress": cfg.progress}
    where = {"out": str(stage_dir(out, r, stage))}
    if stage == "generate":
        return {"model": policy(out, cfg.model, r), "prompts": train_prompts,
                "images_per_prompt": cfg.images_per_prompt, "seed": cfg.seed + r - 1, "image_format": "png",
                "save_latents": True, **images, **where}
    if stage == "score":
        return {"input": str(stage_dir(out, r, "generate")), "scorer": [reward_spec(cfg)], "pairing": cfg.pairing,
                "seed": cfg.seed + r - 1, "workers": 0, "progress": cfg.progress, **where}
    if stage == "train":
        return train_values(cfg, r)
    if stage == "export":
        return {"checkpoint": str(stage_dir(out, r, "train")), "pipeline": True, "progress": cfg.progress, **where}
    scorers = list(dict.fromkeys([reward_spec(cfg)] + ([cfg.fidelity] if cfg.fidelity else [])))
    return {"base": cfg.model, "tuned": str(stage_dir(out, r, "export")), "prompts": eval_prompts,
            "seeds_per_prompt": cfg.eval_seeds, "seed": cfg.seed + 1, "scorers": scorers, **images, **where}


def stage_config(cfg: LoopConfig, r: int, stage: str) -> Any:
    return build_config(STAGES[stage].config, stage_values(cfg, r, stage), f"loop round {r} -> {stage}")


def open_folder(cfg: LoopConfig) -> dict[str, Any]:
    """Create or reopen OUT for this loop; with --overwrite, a different loop's rounds are deleted first."""
    out = Path(cfg.out)
    key = fingerprint({"stage": "loop", "identity": identity_dict(cfg), "inputs": {}})
    try:
        old = read_json(out / MANIFEST)
    except (OSError, ValueError):
        old = None
    if old is not None and old.get("stage") == "loop" and old.get("fingerprint") != key and cfg.overwrite:
        for p in [*out.glob("round-*"), out / "prompts", out / "report.json", out / "report.html"]:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return prepare_output(out, "loop", to_dict(cfg), identity_dict(cfg), overwrite=cfg.overwrite)


def report(cfg: LoopConfig) -> dict[str, Any]:
    """Rebuild OUT/report.json and report.html from the finished rounds' outputs; returns the report."""
    out = Path(cfg.out)
    records = [round_record(r, {s: stage_dir(out, r, s) for s in ROUND_STAGES}, reward_spec(cfg),
                            cfg.fidelity)
               for r in finished_rounds(out) if r <= cfg.rounds]
    meta = {k: getattr(cfg, k) for k in ("model", "scorer", "fidelity", "reference", "images_per_prompt",
                                          "train_steps", "lora_rank", "loss", "beta", "lr", "seed")}
    result = build_loop_report(records, {**meta, "rounds_planned": cfg.rounds})
    write_loop_report(out, result)
    return result


def run(cfg: LoopConfig) -> dict[str, Any]:
    """Run (or resume) the rounds; return the loop report (on the main process)."""
    cfg.preflight()
    quiet_libraries()
    state = process_state()
    main = state.is_main_process
    say = print if main else (lambda *a, **k: None)
    start, out = time.time(), Path(cfg.out)
    if main:
        manifest = open_folder(cfg)
        save_config(cfg, out / "config.yaml")
        write_toy_prompts(cfg)
    state.wait_for_everyone()
    where = position(out, cfg.rounds)
    say(f"[loop] already complete: {out}" if where is None else f"[loop] from round {where[0]}, {where[1]}")
    for r in range(1, cfg.rounds + 1):
        for stage in ROUND_STAGES:
            if stage_done(stage_dir(out, r, stage), stage):
                continue
            stage_cfg = stage_config(cfg, r, stage)
            say(f"[loop] round {r}/{cfg.rounds} {stage} ({time.time() - start:.0f}s)")
            if main or stage not in SINGLE_PROCESS:
                with nested():
                    STAGES[stage].run(stage_cfg)
            state.wait_for_everyone()  # the next stage (on every process) reads what this one's main process wrote
        if main and r < cfg.rounds:
            report(cfg)  # the report grows as the rounds finish (the last one is written below)
    result = report(cfg) if main else None
    if main:
        finish_output(out, manifest, rounds=len(result["rounds"]))
        print(summary(result))
        finish("loop", out, f"{len(result['rounds'])} rounds in round-NN/, report.json",
               f"open {out / 'report.html'}")
    state.wait_for_everyone()
    return result


def summary(report: dict[str, Any]) -> str:
    """The closing table: per round, the samples' reward and diversity and the eval against the base."""
    lines = [f"{'round':>5} {'sample reward':>13} {'diversity':>9} {'win rate (95% CI)':>22} "
             f"{'eval reward':>11} {'fidelity':>8}"]
    for rec in report["rounds"]:
        s, e = rec["samples"], rec["eval"]
        fid = "-" if e.get("fidelity_tuned") is None else f"{e['fidelity_tuned']:.3f}"  # a share, or a CLIP score
        ci = f"{100 * e['win_rate']:.1f}% ({100 * e['ci_low']:.0f}-{100 * e['ci_high']:.0f}%)"
        lines.append(f"{rec['round']:>5} {s['mean_reward']:>13.4f} {_num(s['diversity']):>9} {ci:>22} "
                     f"{e['mean_tuned']:>11.4f} {fid:>8}")
    base = report["base"]
    if base:
        fid = "" if base.get("fidelity") is None else f", fidelity {base['fidelity']:.3f}"
        lines.append(f"base: eval reward {base['mean_reward']:.4f}, diversity {_num(base['diversity'])}{fid}")
    return "\n".join(lines)


def _num(v: Any) -> str:
    """A diversity to 4 decimals, or "-" where it is undefined (fewer than two images per prompt, `--eval-seeds 1`)."""
    return "-" if v is None else f"{v:.4f}"
