"""`aif rl` (grpo, nft, awm) against `aif loop` and one offline DPO run in the toy world, at equal numbers of sampled
images; every run evaluated by `aif eval`'s protocol (held-out toy captions, base and tuned twins sharing a seed):
redness (the reward) and toy-fidelity. An rl run is evaluated at its own --guidance-scale: its policy is the
sampler it was trained as (Flow-GRPO evaluates at its training CFG, DiffusionNFT and AWM without CFG), and sampling
it at another scale asks a different question (on toy-sd15 an rl run trained without CFG and sampled at the model's
7.5 stayed below 90% wins, bench/RESULTS.md). The DPO runs, which train no guided policy, are evaluated at the
model's default guidance, as `aif eval` does.

    python bench/rl_compare.py --model toy-sd3 --out runs/rl-compare     # prints the table as markdown

`rl_vs_base` is the piece tests/test_rl_evidence.py runs: one `aif rl` run through its config, then `aif eval`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from aifeedback.config import build_config
from aifeedback.stages import STAGES
from aifeedback.zoo.toy_world import SIZE, toy_prompts

FIDELITY = "toy-fidelity"
# the rl runs: P prompts x G images per epoch
RL = dict(prompts_per_epoch=8, group_size=8, steps=10, resolution=SIZE, lora_rank=8, batch_size=16, reward="redness",
          progress=False, checkpoint_every=1000, keep_checkpoints=1, overwrite=True)
# per (model, algorithm): found by the runs bench/RESULTS.md lists ("aif rl in the toy world"); 6 epochs x 64 = 384
# sampled images, the budget of `aif loop`'s defaults (3 rounds x 4 images x 32 captions)
SETTINGS = {
    ("toy-sd3", "grpo"): dict(lr=6e-3, clip_range=0.2, steps=6, epochs=6),
    ("toy-sd3", "nft"): dict(lr=1e-2, nft_beta=0.1, epochs=6),
    ("toy-sd3", "awm"): dict(lr=6e-3, epochs=6),
    # toy-sd15's 10 trailing DDIM steps end with a step of noise std 0.01 (0.28 before it), whose log-prob gradient
    # swamps the others unless it is left out (Flow-GRPO's timestep_fraction rule; bench/RESULTS.md)
    ("toy-sd15", "grpo"): dict(lr=4e-3, clip_range=0.2, epochs=6, timestep_fraction=0.9),
    ("toy-sd15", "nft"): dict(lr=1e-3, nft_beta=0.1, epochs=6),
    ("toy-sd15", "awm"): dict(lr=1e-3, epochs=6),
}
TRAIN_CAPTIONS, EVAL_CAPTIONS, EVAL_SEEDS = 32, 32, 4


def write_captions(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """out/train.txt and out/eval.txt: disjoint toy captions (as `aif demo` splits them)."""
    captions = toy_prompts(TRAIN_CAPTIONS + EVAL_CAPTIONS, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("\n".join(captions[:TRAIN_CAPTIONS]) + "\n")
    (out / "eval.txt").write_text("\n".join(captions[TRAIN_CAPTIONS:]) + "\n")
    return out / "train.txt", out / "eval.txt"


def evaluate(model: str, tuned: Path, prompts: Path, out: Path, seed: int = 1,
             guidance: float | None = None) -> dict[str, Any]:
    """`aif eval` of tuned against model on the held-out captions (at `guidance`, default the model's): {scorer:
    its report entry}."""
    cfg = build_config(STAGES["eval"].config, {"guidance": guidance,
        "base": model, "tuned": str(tuned), "prompts": str(prompts), "seeds_per_prompt": EVAL_SEEDS, "seed": seed,
        "scorers": ["redness", FIDELITY], "steps": 10, "dtype": "float32", "batch_size": 64, "out": str(out),
        "overwrite": True, "progress": False})
    return STAGES["eval"].run(cfg)["scorers"]


def rl_vs_base(model: str, algorithm: str, out: Path, reward: str = "redness", seed: int = 0,
               **overrides: Any) -> dict[str, Any]:
    """Train `aif rl` on the training captions, evaluate against the base on the held-out ones; the eval's redness
    and fidelity entries, the run's sampled images and wall time."""
    train, held_out = write_captions(out / "prompts")
    settings = {**RL, **SETTINGS[model, algorithm], "reward": reward, "seed": seed, **overrides}
    start = time.time()
    cfg = build_config(STAGES["rl"].config, dict(settings, model=model, algorithm=algorithm, prompts=str(train),
                                                 out=str(out / "rl")))
    run_dir = STAGES["rl"].run(cfg)
    scorers = evaluate(model, Path(run_dir), held_out, out / "eval", guidance=cfg.guidance_scale)
    return {"redness": scorers["redness"], "fidelity": scorers[FIDELITY], "seconds": time.time() - start,
            "images": cfg.epochs * cfg.prompts_per_epoch * cfg.group_size, "settings": settings}


def loop_vs_base(model: str, out: Path, rounds: int, images_per_prompt: int, train_steps: int) -> dict[str, Any]:
    """`aif loop` (rounds of generate -> score -> DPO train -> export) on the same training captions, its last round's
    model evaluated as the rl runs are. rounds=1 is one offline DPO run: `aif demo`'s pipeline (generate from the
    base, score best-vs-worst pairs, train), the loop's defaults otherwise (lr 5e-5, beta 2000, full fine-tune)."""
    train, held_out = write_captions(out / "prompts")
    start = time.time()
    cfg = build_config(STAGES["loop"].config, {
        "model": model, "prompts": str(train), "eval_prompts": str(held_out), "rounds": rounds,
        "images_per_prompt": images_per_prompt, "train_steps": train_steps, "out": str(out / "loop"),
        "overwrite": True, "progress": False})
    STAGES["loop"].run(cfg)
    scorers = evaluate(model, out / "loop" / f"round-{rounds:02d}" / "export", held_out, out / "eval")
    return {"redness": scorers["redness"], "fidelity": scorers[FIDELITY], "seconds": time.time() - start,
            "images": rounds * images_per_prompt * TRAIN_CAPTIONS,
            "settings": {"rounds": rounds, "images_per_prompt": images_per_prompt, "train_steps": train_steps}}


def line(name: str, r: dict[str, Any]) -> str:
    red, fid = r["redness"], r["fidelity"]
    return (f"| {name} | {r['images']} | {red['mean_base']:.3f} -> {red['mean_tuned']:.3f} | "
            f"{100 * red['win_rate']:.1f}% | {100 * fid['mean_base']:.1f}% -> {100 * fid['mean_tuned']:.1f}% | "
            f"{r['seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-sd3")
    parser.add_argument("--out", default="runs/rl-compare")
    parser.add_argument("--algorithms", default="grpo,nft,awm")
    parser.add_argument("--rl-only", action="store_true", help="skip the loop and offline DPO runs")
    args = parser.parse_args()
    out = Path(args.out)
    rows = {}
    for algorithm in args.algorithms.split(","):
        rows[f"aif rl --algorithm {algorithm}"] = rl_vs_base(args.model, algorithm, out / algorithm)
    if not args.rl_only:  # the loop's defaults: 3 rounds x 4 images x 32 captions = 384 images, as 6 rl epochs of 64
        rows["aif loop (3 online rounds of DPO)"] = loop_vs_base(args.model, out / "loop", 3, 4, 80)
        rows["offline DPO (1 round, 12 images per caption)"] = loop_vs_base(args.model, out / "offline", 1, 12, 240)
    print("| run | sampled images | held-out redness base -> tuned | win rate | fidelity base -> tuned | wall s |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(line(name, r))
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
