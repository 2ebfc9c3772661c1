"""`aif rl` under FSDP on 2 CPU processes (gloo), launched with the shipped recipes/accelerate/fsdp_sd35_8gpu.yaml
(one FSDP unit per JointTransformerBlock, sharded state dicts) through tests/fsdp_cpu.py: accelerate selects FSDP
only on an accelerator, and that module's docstring says what its test-only patch changes and why. Each run is
compared with the same run under DDP (tests/test_rl_multiprocess.py shows DDP equals one process): the same
rollouts, metrics and weights, bitwise; every process runs the same number of denoiser forwards (each is a
collective under FSDP); a rerun resumes from accelerate's sharded checkpoint exactly. And `aif train`, which
shares the checkpoint, resume and clipping pieces, the same way."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.launch import accelerate_launch, accelerate_launch_fsdp, run_group
from tests.test_rl_multiprocess import ARGS, lora, metrics, rollout

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "recipes" / "accelerate" / "fsdp_sd35_8gpu.yaml"
TIMING = ("images_per_s", "updates_per_s")


def launch(tmp_path: Path, out: Path, epochs: int, fsdp: bool, **extra) -> dict[int, int]:
    """One `aif rl` launch on 2 processes; under FSDP, each process's count of denoiser forwards."""
    args = dict(ARGS, prompts=tmp_path / "prompts.txt", out=out, epochs=epochs, kl_beta=0.01, **extra)
    forwards = tmp_path / f"forwards-{out.name}-{epochs}"
    forwards.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               AIF_TEST_FORWARDS=str(forwards))
    prefix = accelerate_launch_fsdp(2, FSDP_CONFIG) if fsdp else accelerate_launch(2)
    cmd = [*prefix, "rl", *[f"--{k.replace('_', '-')}={v}" for k, v in args.items()], "--global-std",
           "--no-progress"]
    res = run_group(cmd, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return {int(p.stem.split("-")[1]): int(p.read_text()) for p in forwards.glob("forwards-*.txt")}


def same_metrics(a: Path, b: Path) -> None:
    """Every metric of every epoch equal, but the timings, and grad_norm to 1e-6 (FSDP sums its shards' squares in
    another order than DDP's one tensor)."""
    for x, y in zip(metrics(a), metrics(b), strict=True):
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-6)
        assert {k: v for k, v in x.items() if k not in (*TIMING, "grad_norm")} == \
            {k: v for k, v in y.items() if k not in (*TIMING, "grad_norm")}


def sharded(out: Path, epoch: int) -> bool:
    """Whether the checkpoint holds accelerate's sharded model and optimizer (written only under FSDP)."""
    folder = out / "checkpoints" / f"checkpoint-{epoch:06d}"
    return (folder / "pytorch_model_fsdp_0").is_dir() and (folder / "optimizer_0").is_dir()


@pytest.fixture
def prompts(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red apple\na blue car\na green tree\n")


@pytest.mark.slow  # three launches of 2 processes (~1 min of CPU)
def test_grpo_lora_under_fsdp_equals_ddp_and_resumes_exactly(tmp_path, prompts):
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    # sampling, the KL reference (LoRA disabled through the FSDP model), the update and the --eval-steps pass (run
    # whole by every process) are collectives: every process runs as many forwards
    first = launch(tmp_path, fsdp, 1, fsdp=True)
    assert len(first) == 2 and first[0] == first[1] > 0
    resumed = launch(tmp_path, fsdp, 2, fsdp=True)  # from checkpoint-000001: accelerate's sharded files
    assert resumed[0] == resumed[1] > 0
    launch(tmp_path, ddp, 2, fsdp=False)
    assert sharded(fsdp, 1) and sharded(fsdp, 2) and not sharded(ddp, 2)  # it did run under FSDP
    same_metrics(fsdp, ddp)  # both epochs: rewards, advantages' statistics, losses, ratio check, eval rewards
    assert [r["ratio_dev_first"] for r in metrics(fsdp)] == [0.0, 0.0]
    for epoch in (1, 2):  # the LoRA gathered from the shards; epoch 2 after the resume (optimizer state restored)
        x, y = lora(fsdp, epoch), lora(ddp, epoch)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        assert rollout(fsdp, epoch - 1) == rollout(ddp, epoch - 1)
    assert not all(torch.equal(v, lora(fsdp, 1)[k]) for k, v in lora(fsdp, 2).items())  # epoch 2 trained


@pytest.mark.slow  # two launches of 2 processes (~40 s of CPU)
def test_nft_full_fine_tune_under_fsdp_equals_ddp(tmp_path, prompts):
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    counts = launch(tmp_path, fsdp, 1, fsdp=True, algorithm="nft", lora_rank=0)
    assert counts[0] == counts[1] > 0
    launch(tmp_path, ddp, 1, fsdp=False, algorithm="nft", lora_rank=0)
    assert sharded(fsdp, 1)
    same_metrics(fsdp, ddp)  # v_dev_first included
    # the whole transformer, gathered from the shards by the main process alone
    x, y = (load_file(out / "checkpoints" / "checkpoint-000001" / "transformer" /
                      "diffusion_pytorch_model.safetensors") for out in (fsdp, ddp))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    config = json.loads((fsdp / "checkpoints" / "checkpoint-000001" / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "SD3Transformer2DModel"


@pytest.mark.slow  # three launches of 2 processes (~40 s of CPU)
def test_train_lora_under_fsdp_resumes_to_the_ddp_run(tmp_path):
    """`aif train` shares the checkpoint, resume and clipping pieces: a LoRA DPO run under FSDP (the shipped
    fsdp_8gpu.yaml around the tiny SD1.5 UNet), resumed from its sharded checkpoint at step 2, equals a straight DDP
    run bitwise (losses, gradient norms, LoRA at steps 2 and 4)."""
    from tests.pairs_fixtures import pickapic_rows, read_metrics, write_pickapic

    data = write_pickapic(tmp_path / "pairs", pickapic_rows(8))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    args = ["train", "--dataset", str(data), "--model", "tiny-sd15", "--resolution", "16", "--batch-size", "1",
            "--lora-rank", "2", "--checkpoint-every", "2", "--validation-every", "0", "--num-workers", "0",
            "--trackers", "none"]
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    config = ROOT / "recipes" / "accelerate" / "fsdp_8gpu.yaml"
    for launcher, out, steps in [(accelerate_launch_fsdp, fsdp, 2), (accelerate_launch_fsdp, fsdp, 4), (None, ddp, 4)]:
        prefix = launcher(2, config) if launcher else accelerate_launch(2)
        res = run_group([*prefix, *args, "--max-steps", str(steps), "--out", str(out)], env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    assert sharded(fsdp, 2) and sharded(fsdp, 4)
    for x, y in zip(read_metrics(fsdp), read_metrics(ddp), strict=True):
        assert (x["step"], x["loss"]) == (y["step"], y["loss"])
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-6)  # one process's shard norm, before
    for step in (2, 4):
        x, y = lora(fsdp, step), lora(ddp, step)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
