"""`aif rl` under `accelerate launch` with 2 CPU processes (DDP over gloo): each process samples whole groups, the
rewards are gathered before the advantages, the main process writes the files, and a rerun resumes exactly; and
the split of the epoch's prompts over processes."""

import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from aifeedback.config import build_config
from aifeedback.errors import AifError
from aifeedback.stages.rl_config import RLConfig
from aifeedback.stages.rl_rollout import process_share
from tests.launch import accelerate_launch, run_group

ROOT = Path(__file__).resolve().parents[1]
# two rewards (each z-scored over the epoch) and --global-std: advantages that depend on every process's rewards;
# an evaluation pass of 3 prompts in batches of 2, which the processes share unevenly
ARGS = dict(model="tiny-sd3", prompts_per_epoch=2, group_size=2, steps=3, reward="redness:1,brightness:-0.5",
            lora_rank=2, batch_size=2, resolution=32, lr=1e-2, eval_steps=2, eval_every=1, eval_prompts=3)


def test_each_process_gets_a_consecutive_share_of_whole_groups():
    assert [list(process_share(6, rank, 3)) for rank in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert list(process_share(4, 0, 1)) == [0, 1, 2, 3]


def test_a_launch_that_cannot_split_the_groups_or_fit_the_warmup_is_refused_with_the_numbers():
    cfg = build_config(RLConfig, dict(prompts_per_epoch=5, group_size=2, batch_size=2, epochs=2, warmup_steps=6))
    assert cfg.launch_problems(1) == []  # 2 epochs x 5 optimizer steps
    (split,) = cfg.launch_problems(2)
    assert "--prompts-per-epoch 5 cannot be split into whole groups over 2 processes" in split
    assert "multiple of 2 (e.g. 4 or 6)" in split
    # 4 prompts on 2 processes: each process steps over 2 groups of 2 images, 2 steps per epoch, 4 in all
    (warmup,) = dataclasses.replace(cfg, prompts_per_epoch=4).launch_problems(2)
    assert "--warmup-steps 6 exceeds the run's 4 optimizer steps on 2 processes" in warmup and "at most 4" in warmup


def test_deepspeed_is_refused_with_the_reason_and_ddp_fsdp_pass():
    from accelerate.utils import DistributedType

    from aifeedback.stages.rl_update import check_distribution

    with pytest.raises(AifError, match="DeepSpeed.*launch with DDP"):
        check_distribution(DistributedType.DEEPSPEED)
    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.FSDP):
        check_distribution(kind)


def launch(prompts, out, processes, epochs):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in dict(ARGS, prompts=prompts, out=out, epochs=epochs).items()]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [*accelerate_launch(processes), "rl", *args, "--global-std", "--no-progress"]
    res = run_group(cmd, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def rollout(out, epoch):
    import pyarrow.parquet as pq

    return pq.read_table(out / "rollouts" / "data" / f"train-{epoch:05d}.parquet").to_pylist()


def files(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "rng" not in p.name)


def lora(out, epoch):
    return load_file(out / "checkpoints" / f"checkpoint-{epoch:06d}" / "pytorch_lora_weights.safetensors")


@pytest.mark.slow  # four runs, three of them under accelerate launch (~2 min of CPU)
def test_two_processes_sample_the_groups_one_process_would_write_its_files_and_resume_exactly(tmp_path,
                                                                                             monkeypatch):
    from aifeedback.stages import STAGES

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na blue car\na green tree\n")
    one = STAGES["rl"].run(build_config(RLConfig, dict(ARGS, prompts=str(prompts), out=str(tmp_path / "one"),
                                                       epochs=1, progress=False, global_std=True)))
    two = tmp_path / "two"
    res = launch(prompts, two, 2, epochs=1)
    assert "2 processes" in res.stderr
    assert files(two) == files(one)  # the main process alone writes the run folder
    # groups are seeded by (seed, epoch, prompt index), not by the process, and rewards are gathered before they
    # are combined and the advantages computed: the same images, rewards and advantages as one process
    # sampling every group
    a, b = rollout(one, 0), rollout(two, 0)
    assert [r["prompt"] for r in b] == ["a red apple"] * 2 + ["a blue car"] * 2
    for x, y in zip(a, b, strict=True):
        assert x["reward"] == y["reward"] and x["advantage"] == y["advantage"]
        assert (torch.tensor(list(Image.open(io.BytesIO(x["image"])).getdata())) ==
                torch.tensor(list(Image.open(io.BytesIO(y["image"])).getdata()))).all()
    assert metrics(two)[0]["reward_mean"] == metrics(one)[0]["reward_mean"]
    assert "eval/reward" in metrics(two)[0]  # the evaluation pass, shared by the processes and gathered

    launch(prompts, two, 2, epochs=2)  # resumed from checkpoint-000001
    straight = tmp_path / "straight"
    launch(prompts, straight, 2, epochs=2)
    m = metrics(straight)
    # each process steps over its own group: 1 optimizer step per epoch; the first update's ratio is exactly 1 on
    # every process (the logged value is the maximum over the processes)
    assert [r["step"] for r in m] == [1, 2] and [r["ratio_dev_first"] for r in m] == [0.0, 0.0]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() and r["grad_norm"] > 0 for r in m)
    timing = ("images_per_s", "updates_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in metrics(two)] == \
        [{k: v for k, v in r.items() if k not in timing} for r in m]
    x, y = lora(two, 2), lora(straight, 2)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert not all(torch.equal(x[k], lora(straight, 1)[k]) for k in x)  # epoch 2 trained
    assert rollout(two, 1) == rollout(straight, 1)

    import aifeedback.stages.rl as stage

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(stage, "load_pipeline", no_load)
    # one process cannot continue a 2-process run: refused before any model loads
    with pytest.raises(AifError, match="written by a run with 2 processes; resume it with the same number"):
        STAGES["rl"].run(build_config(RLConfig, dict(ARGS, prompts=str(prompts), out=str(two), epochs=3,
                                                     progress=False, global_std=True)))
