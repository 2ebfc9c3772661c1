"""`aif rl` (bench/rl.py) against flow_grpo's scripts/train_sd3.py at equal work, side by side, on the CPU.

  AIF_CACHE=/work/aif_cache OMP_NUM_THREADS=1 python bench/flow_grpo_compare.py \\
      --flow-grpo /tmp/flow_grpo --extra /work/fg_extra --reps 2

--flow-grpo is a checkout of yifan123/flow_grpo at commit ac4c86e (`git clone
https://github.com/yifan123/flow_grpo && git -C flow_grpo checkout ac4c86e`; scripts/train_sd3.py, config/base.py
and flow_grpo/ are used); --extra a folder with what their script imports and
this venv lacks (`pip install --target DIR --no-deps ml_collections wandb==0.19.11 platformdirs docker-pycreds six
sentry-sdk "protobuf>=6,<7"`: wandb 0.19 reads protobuf <= 6, this venv has 7), put first on their PYTHONPATH only.
Nothing of theirs is copied here: at run time a temp dir gets their script with the replacements of PATCHES (each
must match exactly once, else this stops) and a config file that loads their config/base.py and sets the shared work.

Both sides: the same tiny-sd3 folder (aifeedback.zoo.tiny_pipeline_path), resolution, P prompts x G images per epoch,
sampling steps (SDE, noise level 0.7), CFG 4.5 while sampling and in the update, updates of --batch-size
trajectories over every step, KL beta with the reference forward, LoRA on the same 8 attention projections at rank
32 (their script's fixed r), T5 padded to 128 tokens (their encode_prompt's max_sequence_length; bench/rl.py
--t5-length), fp32, one process, OMP_NUM_THREADS=1, no evaluation. Rewards differ: theirs `jpeg_compressibility`,
ours `redness` (both pixel statistics, no model; --reward-cost times both on one epoch's images). Repetitions run
interleaved (ours, theirs, ours, ...). Whole-process wall is measured here around each subprocess, the same way for
both; per-epoch sampling and training times are the mean over the epochs after the first (a warm-up): ours from
metrics.jsonl's rates, theirs from the AIF_EPOCH lines the patches print.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (their text, replacement, why): applied to a temp copy of scripts/train_sd3.py
PATCHES = [
    ("\n    while True:\n", "\n    while epoch < config.aif_epochs:\n",
     "the loop has no epoch limit: stop after --epochs epochs, as ours does"),
    ("        if epoch % config.eval_freq == 0:\n", "        if config.eval_freq and epoch % config.eval_freq == 0:\n",
     "epoch 0 always evaluates the whole test split: eval_freq 0 turns evaluation off (ours evaluates nothing)"),
    ("with transformer.module.disable_adapter():", "with transformer.disable_adapter():",
     "`.module` is the DDP wrapper's; in one process accelerate returns the PeftModel itself (AttributeError)"),
    ("        #################### SAMPLING ####################\n",
     "        #################### SAMPLING ####################\n        _aif_t0 = time.perf_counter()\n",
     "timing: the epoch's sampling starts (prompt encoding, SDE sampling, decoding, rewards, advantages)"),
    ("        #################### TRAINING ####################\n",
     "        _aif_t1 = time.perf_counter()\n        #################### TRAINING ####################\n",
     "timing: the updates start"),
    ("        epoch+=1\n",
     "        print('AIF_EPOCH', epoch, _aif_t1 - _aif_t0, time.perf_counter() - _aif_t1, flush=True)\n"
     "        epoch+=1\n", "timing: the epoch ends"),
]

CONFIG = '''import importlib.util
spec = importlib.util.spec_from_file_location("fg_base", {base!r})
fg_base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fg_base)


def get_config():
    c = fg_base.get_config()
    c.aif_epochs = {epochs}
    c.pretrained.model = {model!r}
    c.dataset = {dataset!r}
    c.prompt_fn = "general_ocr"
    c.logdir = c.save_dir = {logdir!r}
    c.resolution = {resolution}
    c.mixed_precision = "no"
    c.allow_tf32 = False
    c.eval_freq = 0
    c.save_freq = 1
    c.sample.num_steps = c.sample.eval_num_steps = {steps}
    c.sample.guidance_scale = {guidance}
    c.sample.train_batch_size = {batch}
    c.sample.num_image_per_prompt = {group}
    c.sample.num_batches_per_epoch = {batches}
    c.sample.noise_level = 0.7
    c.train.batch_size = {batch}
    c.train.cfg = {guidance} > 1
    c.train.beta = {kl_beta}
    c.train.clip_range = 1e-4
    c.train.learning_rate = 3e-4
    c.reward_fn = {{"jpeg_compressibility": 1.0}}
    return c
'''


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flow-grpo", required=True, type=Path, help="a checkout of yifan123/flow_grpo")
    p.add_argument("--extra", required=True, type=Path, help="the --target folder with absl/ml_collections/wandb")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--prompts-per-epoch", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--guidance-scale", type=float, default=4.5)
    p.add_argument("--kl-beta", type=float, default=0.01)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--reward-cost", action="store_true", help="also time both rewards on 8 images")
    return p.parse_args()


def patched_script(src: Path, dst: Path) -> None:
    text = src.read_text()
    for old, new, why in PATCHES:
        if text.count(old) != 1:
            sys.exit(f"{src}: {old.strip()!r} occurs {text.count(old)} times, not once ({why}); "
                     "the checkout is not flow_grpo commit ac4c86e's script")
        text = text.replace(old, new)
    dst.write_text(text)


def run_theirs(args: argparse.Namespace, model: str, tmp: Path) -> dict:
    dataset = tmp / "prompts"
    dataset.mkdir(exist_ok=True)
    prompts = "".join(f"a red object number {i}\n" for i in range(args.prompts_per_epoch))
    (dataset / "train.txt").write_text(prompts)
    (dataset / "test.txt").write_text(prompts)
    batches = args.prompts_per_epoch * args.group_size // args.batch_size
    cfg = tmp / "aif_flow_grpo_config.py"
    cfg.write_text(CONFIG.format(base=str(args.flow_grpo / "config" / "base.py"), epochs=args.epochs, model=model,
                                 dataset=str(dataset), logdir=str(tmp / "logs"), resolution=args.resolution,
                                 steps=args.steps, guidance=args.guidance_scale, batch=args.batch_size,
                                 group=args.group_size, batches=batches, kl_beta=args.kl_beta))
    script = tmp / "train_sd3_patched.py"
    patched_script(args.flow_grpo / "scripts" / "train_sd3.py", script)
    env = dict(os.environ, PYTHONPATH=f"{args.extra}:{args.flow_grpo}", WANDB_MODE="disabled",
               TQDM_DISABLE="1")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, str(script), f"--config={cfg}"], env=env, cwd=tmp,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"flow_grpo's script failed:\n{out.stderr[-3000:]}")
    epochs = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("AIF_EPOCH")]
    timed = [(float(s), float(u)) for _, s, u in epochs][1:]
    return {"wall_s": wall, "sample_s": statistics.mean(s for s, _ in timed),
            "update_s": statistics.mean(u for _, u in timed), "images": args.prompts_per_epoch * args.group_size,
            "updates": batches, "epochs": len(epochs)}


def run_ours(args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(HERE / "rl.py"), "--tiny", "--family", "sd3", "--resolution", str(args.resolution),
           "--prompts-per-epoch", str(args.prompts_per_epoch), "--group-size", str(args.group_size),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
           "--lora-rank", "32", "--kl-beta", str(args.kl_beta), "--guidance-scale", str(args.guidance_scale),
           "--t5-length", "128"]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"bench/rl.py failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    images = args.prompts_per_epoch * args.group_size
    updates = images // args.batch_size
    return {"wall_s": wall, "sample_s": images / res["images_per_s"], "update_s": updates / res["updates_per_s"],
            "images": images, "updates": updates, "epochs": args.epochs}


def reward_cost(flow_grpo: Path) -> None:
    """Both rewards on 8 images of 32 px, ms per call (their script and ours call them once per sampled batch)."""
    import torch
    from PIL import Image
    sys.path.insert(0, str(flow_grpo))
    from flow_grpo.rewards import jpeg_compressibility

    from aifeedback.scoring.scorers import load_scorer
    images = torch.rand(8, 3, 32, 32)
    pils = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype("uint8")) for im in images]
    jpeg, red = jpeg_compressibility(), load_scorer("redness")
    for name, fn in (("jpeg_compressibility", lambda: jpeg(images, [""] * 8, {})),
                     ("redness", lambda: red.score(pils, [""] * 8))):
        fn()
        t = time.perf_counter()
        for _ in range(20):
            fn()
        print(f"{name}: {(time.perf_counter() - t) / 20 * 1e3:.2f} ms per 8 images")


def main() -> None:
    args = parse_args()
    if args.epochs < 2:
        sys.exit("--epochs must be 2 or more: the first epoch is a warm-up, not timed")
    if args.batch_size % args.group_size or (args.prompts_per_epoch * args.group_size) % args.batch_size:
        sys.exit("--batch-size must be a multiple of --group-size and divide prompts x group (flow_grpo's sampler "
                 "puts whole groups in one sampling batch)")
    from aifeedback.zoo import tiny_pipeline_path
    model = str(tiny_pipeline_path("tiny-sd3"))
    rows = []
    for rep in range(args.reps):
        for side in ("aif rl", "flow_grpo train_sd3.py"):
            with tempfile.TemporaryDirectory() as tmp:
                r = run_ours(args) if side == "aif rl" else run_theirs(args, model, Path(tmp))
            rows.append((side, rep, r))
            print(f"# {side} rep {rep}: {json.dumps({k: round(v, 3) for k, v in r.items()})}", flush=True)
    print(f"\nmodel {model}, {args.resolution} px, {args.prompts_per_epoch} x {args.group_size} images, "
          f"{args.steps} steps, batch {args.batch_size}, CFG {args.guidance_scale}, KL beta {args.kl_beta}, "
          f"{args.epochs} epochs (the first a warm-up), {args.reps} reps\n")
    print("| side | rep | process wall s | sampling s/epoch | training s/epoch | images/s | s/update |")
    print("|---|---|---|---|---|---|---|")
    for side, rep, r in rows:
        print(f"| {side} | {rep} | {r['wall_s']:.1f} | {r['sample_s']:.2f} | {r['update_s']:.2f} | "
              f"{r['images'] / r['sample_s']:.2f} | {r['update_s'] / r['updates']:.2f} |")
    for side in ("aif rl", "flow_grpo train_sd3.py"):
        med = {k: statistics.median(r[k] for s, _, r in rows if s == side) for k in ("wall_s", "sample_s", "update_s")}
        r = next(r for s, _, r in rows if s == side)
        print(f"| {side} | median | {med['wall_s']:.1f} | {med['sample_s']:.2f} | {med['update_s']:.2f} | "
              f"{r['images'] / med['sample_s']:.2f} | {med['update_s'] / r['updates']:.2f} |")
    if args.reward_cost:
        reward_cost(args.flow_grpo)


if __name__ == "__main__":
    main()
