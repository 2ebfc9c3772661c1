"""`aif train` end to end on tiny models at 16 px: objective at step 0, learning, data paths, LoRA/full, SDXL/SD1.5,
exact resume after SIGKILL, multi-process accelerate launch, and clear errors."""

import json
import math
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from aifeedback.errors import AifError, DataError
from tests.launch import SPAWNING_LAUNCHER, accelerate_launch, run_group
from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic, write_score_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    return write_pickapic(tmp_path_factory.mktemp("human"), pickapic_rows(6))


@pytest.fixture(scope="module")
def ai_latents(tmp_path_factory):
    return write_score_dir(tmp_path_factory.mktemp("ai"), pickapic_rows(4, seed=1), latent_shape=[4, 8, 8])


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return env


def test_sd15_full_run_folder_and_first_loss_is_ln2(human, tmp_path):
    from aifeedback.stages.train import run

    out = run(tiny_train(human, tmp_path / "run", validation_every=2, validation_steps=2,
                         validation_prompts=["a red cat"], validation_seeds=[0, 1], trackers="tensorboard"))
    m = read_metrics(out)
    assert [r["step"] for r in m] == [1, 2]
    assert abs(m[0]["loss"] - math.log(2)) < 1e-6 and m[0]["implicit_acc"] == 0.5
    for key in ("loss", "implicit_acc", "mse_model_w", "mse_model_l", "mse_ref_w", "mse_ref_l", "reward_margin",
                "grad_norm", "lr", "pairs_per_s"):
        assert key in m[1], key
    ckpt = out / "checkpoints" / "checkpoint-000002"
    assert (ckpt / "unet" / "diffusion_pytorch_model.safetensors").exists() and (ckpt / "trainer_state.json").exists()
    assert (out / "validation" / "step-000002.png").exists()
    assert list((out / "logs").rglob("events.out.tfevents.*")), "tensorboard events"
    from aifeedback.storage.manifest import read_manifest

    man = read_manifest(out, "train")
    assert man["complete"] and man["counts"]["pairs"] == 6
    assert (out / "config.yaml").exists()


def test_sdxl_lora_on_human_pairs_first_loss_is_ln2(human, tmp_path):
    from aifeedback.stages.train import run

    out = run(tiny_train(human, tmp_path / "run", model="tiny-sdxl", lora_rank=4, lr=1e-3, random_crop=True,
                         caption_dropout=0.5, mixed_precision="bf16"))
    m = read_metrics(out)
    assert abs(m[0]["loss"] - math.log(2)) < 1e-6
    assert (out / "checkpoints" / "checkpoint-000002" / "pytorch_lora_weights.safetensors").exists()
    assert not (out / "checkpoints" / "checkpoint-000002" / "unet").exists()


def test_full_finetune_in_bf16_starts_at_ln2_with_nontrivial_weights(human, tmp_path, tiny_sd15):
    """The reference is a bf16 copy; the policy keeps fp32 master weights. Unless the policy starts from exactly the
    reference's (rounded) weights, layers that autocast runs in fp32 (norms) differ and beta amplifies it. The tiny
    model's norm weights are exactly 1 and 0 (exact in bf16), so perturb every weight first."""
    from diffusers import DiffusionPipeline

    from aifeedback.stages.train import run

    pipe = DiffusionPipeline.from_pretrained(tiny_sd15)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    pipe.save_pretrained(tmp_path / "model")
    out = run(tiny_train(human, tmp_path / "run", model=str(tmp_path / "model"), mixed_precision="bf16", max_steps=1,
                         checkpoint_every=1))
    assert abs(read_metrics(out)[0]["loss"] - math.log(2)) < 1e-6


@pytest.mark.parametrize("model,rank,lr", [("tiny-sd15", 0, 1e-4), ("tiny-sdxl", 4, 1e-3)])
def test_short_run_lowers_loss_and_raises_accuracy_on_fixed_set(ai_latents, tmp_path, model, rank, lr):
    from aifeedback.stages.train import run
    from tests.fixed_set import fixed_set_metrics

    out = run(tiny_train(ai_latents, tmp_path / "run", data="ai", model=model, lora_rank=rank, lr=lr, beta=500.0,
                         batch_size=4, max_steps=10, checkpoint_every=10, flip=False))
    loss, acc = fixed_set_metrics(model, out / "checkpoints" / "checkpoint-000010", "ai", ai_latents, beta=500.0)
    assert loss < math.log(2) - 0.05 and acc > 0.6  # at step 0 these are ln 2 and 0.5


def test_stored_latents_used_only_when_shapes_match(ai_latents):
    from aifeedback.data import pairs as D

    table = D.open_table("ai", str(ai_latents), "train")
    pairs, stats = D.filter_labels(table)
    assert stats.kept == 4
    assert D.stored_latent_shape(table, pairs, (4, 8, 8))[0] == (4, 8, 8)
    shape, why = D.stored_latent_shape(table, pairs, (4, 16, 16))
    assert shape is None and "VAE" in why
    made_by = {"model": "tiny-sdxl", "vae": None}
    assert D.stored_latent_shape(table, pairs, (4, 8, 8), made_by, dict(made_by))[0] == (4, 8, 8)
    shape, why = D.stored_latent_shape(table, pairs, (4, 8, 8), made_by, {"model": "tiny-sd15", "vae": None})
    assert shape is None and "made by model tiny-sdxl" in why  # same shape, another model's latent space


def test_resume_equals_uninterrupted_in_process(human, tmp_path):
    from safetensors.torch import load_file

    from aifeedback.stages.train import run

    kw = dict(max_steps=4, grad_accum=2, checkpoint_every=2, keep_checkpoints=1)
    run(tiny_train(human, tmp_path / "a", **kw))
    run(tiny_train(human, tmp_path / "b", **dict(kw, max_steps=2)))
    run(tiny_train(human, tmp_path / "b", **kw))  # --resume auto picks up checkpoint-000002
    wa = load_file(tmp_path / "a/checkpoints/checkpoint-000004/unet/diffusion_pytorch_model.safetensors")
    wb = load_file(tmp_path / "b/checkpoints/checkpoint-000004/unet/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] == [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["checkpoint-000004"]  # keep_checkpoints=1


def test_sigkill_and_resume_equals_uninterrupted(human, tmp_path):
    """A LoRA run SIGKILLed after its first checkpoint, rerun with the same config, ends bitwise equal."""
    import multiprocessing

    from safetensors.torch import load_file

    from aifeedback.stages.train import run

    kw = dict(model="tiny-sdxl", lora_rank=2, lr=1e-3, max_steps=12, checkpoint_every=2)
    run(tiny_train(human, tmp_path / "ref", **kw))
    out = tmp_path / "killed"
    cfg = tiny_train(human, out, **kw)
    proc = multiprocessing.get_context("fork").Process(target=run, args=(cfg,))  # a real process, already imported
    proc.start()
    deadline = time.time() + 120
    while not (out / "checkpoints" / "checkpoint-000002").exists() and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert not (out / "checkpoints" / "checkpoint-000012").exists(), "the run finished before it could be killed"
    run(cfg)  # the same command again: resumes from the latest complete checkpoint
    name = "checkpoints/checkpoint-000012/pytorch_lora_weights.safetensors"
    a, b = load_file(tmp_path / "ref" / name), load_file(out / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 13))
    assert [r["loss"] for r in read_metrics(out)] == [r["loss"] for r in read_metrics(tmp_path / "ref")]


def test_two_process_accelerate_launch(tmp_path):
    rows = pickapic_rows(8)
    for r in (4, 7):  # unreadable pairs (both met by process 1 with this seed): reported and counted once
        rows[r]["jpg_0"] = b"not an image"
    data = write_pickapic(tmp_path / "pairs", rows)
    out = tmp_path / "ddp"
    cmd = [*accelerate_launch(2),
           "train", "--dataset", str(data), "--model", "tiny-sd15", "--resolution", "16", "--batch-size", "1",
           "--max-steps", "4", "--checkpoint-every", "2", "--validation-every", "0", "--num-workers", "0",
           "--trackers", "none", "--out", str(out)]
    res = run_group(cmd, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    m = read_metrics(out)
    assert [r["step"] for r in m] == [1, 2, 3, 4] and abs(m[0]["loss"] - math.log(2)) < 1e-6
    assert "2 pairs/step" in res.stderr and "2 process(es)" in res.stderr
    assert (out / "checkpoints" / "checkpoint-000002" / "rng-1.safetensors").exists()  # each process its own
    # one epoch (4 steps x 2 processes = 8 pairs) meets both bad pairs once; the count is over all processes
    assert sorted(re.findall(r"skipped unreadable pair at row (\d+)", res.stderr)) == ["4", "7"]
    assert m[-1]["bad_images"] == 2 and json.loads((out / "manifest.json").read_text())["counts"]["bad_images"] == 2


def test_labels_ties_corrupt_images_and_empty_dataset(tmp_path):
    from aifeedback.data import pairs as D

    rows = pickapic_rows(5)
    rows[1].update(label_0=0.5, label_1=0.5)  # tie
    rows[2].update(label_0=float("nan"))  # bad
    rows[3].update(label_0=1.0, label_1=1.0)  # bad
    rows[4]["jpg_0"] = rows[4]["jpg_1"] = b"not an image"
    table = D.open_table("human", str(write_pickapic(tmp_path / "d", rows)), "train")
    pairs, stats = D.filter_labels(table)
    assert [r for r, _ in pairs] == [0, 4] and (stats.ties, stats.bad_labels) == (1, 2)
    assert "row 2" in stats.summary("x") and "row 3" in stats.summary("x")
    ds = D.PairDataset(table, pairs, D.Transform(16), seed=0, window=2)
    pos = next(p for p in range(2) if ds.pair_at(p)[0] == 4)
    item = ds[pos]  # row 4 is corrupt: replaced by the other pair of its window and reported
    assert item["row"] == 0 and item["skipped"][0][0] == 4 and "UnidentifiedImageError" in item["skipped"][0][1]
    ties_only = [dict(r, label_0=0.5, label_1=0.5) for r in pickapic_rows(2)]
    table = D.open_table("human", str(write_pickapic(tmp_path / "t", ties_only)), "train")
    pairs, stats = D.filter_labels(table)
    with pytest.raises(DataError, match="no usable preference pairs.*2 ties dropped"):
        raise D.no_pairs_error("t", stats)


def test_order_is_seeded_and_transforms_are_per_position(human):
    from aifeedback.data import pairs as D

    table = D.open_table("human", str(human), "train")
    pairs, _ = D.filter_labels(table)
    tr = D.Transform(16, random_crop=True, flip=True, caption_dropout=0.5)
    a, b = D.PairDataset(table, pairs, tr, 0, 2), D.PairDataset(table, pairs, tr, 0, 2)
    assert [a.pair_at(p) for p in range(12)] == [b.pair_at(p) for p in range(12)]
    assert sorted(a.pair_at(p) for p in range(6)) == sorted(pairs)  # an epoch visits every pair once
    assert torch.equal(a[7]["pixels"], b[7]["pixels"]) and a[7]["caption"] == b[7]["caption"]
    assert a[7]["pixels"].shape == (2, 3, 16, 16) and a[7]["time_ids"].shape == (2, 6)
    # processes take disjoint slices of every global micro-batch
    s0, s1 = iter(D.PositionSampler(2, 0, 2, start=3)), iter(D.PositionSampler(2, 1, 2, start=3))
    assert next(s0) == [12, 13] and next(s1) == [14, 15]


def test_sdxl_time_ids_record_original_size_and_crop():
    from PIL import Image

    from aifeedback.data.pairs import Transform

    img = Image.new("RGB", (40, 20))
    _, ids = Transform(16).image(img, 0.0, 0.0, flip=False)
    assert ids == [20, 40, 0, 8, 16, 16]  # resized to 32x16, centre crop starts 8 px from the left
    _, ids = Transform(16, random_crop=True).image(img, 0.0, 1.0, flip=True)
    assert ids == [20, 40, 0, 0, 16, 16]  # cropped at the right edge then flipped: nothing cut on the left


def test_streaming_batches_resume_at_the_same_position(human):
    import datasets

    from aifeedback.data import pairs as D
    from aifeedback.data.stream import PairStream

    ds = D.open_table("human", str(human), "train", streaming=True)
    assert isinstance(ds, datasets.IterableDataset)
    tr = D.Transform(16)
    full = PairStream(ds, tr, 2, 0, 1, 0, 4, D.PairStats())
    first, states = [], []
    for _ in range(3):  # one epoch of 6 pairs
        states.append(full.state())
        first.append(next(full)["rows"])
    assert sorted(r for rows in first for r in rows) == list(range(6))
    resumed = PairStream(ds, tr, 2, 0, 1, 0, 4, D.PairStats(), state=states[2])
    assert next(resumed)["rows"] == first[2]


def test_errors_name_the_problem(human, tmp_path):
    from aifeedback.stages.train import run

    with pytest.raises(AifError, match="no complete checkpoint"):
        run(tiny_train(human, tmp_path / "r", resume="latest"))
    bad = tmp_path / "bad"
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad.mkdir()
    pq.write_table(pa.table({"caption": ["x"], "image": [b""]}), bad / "train.parquet")
    with pytest.raises(DataError, match="lacks the Pick-a-Pic column"):
        run(tiny_train(bad, tmp_path / "r2"))
    with pytest.raises(DataError, match="needs an `aif score` output"):
        run(tiny_train(human, tmp_path / "r3", data="ai"))
    from aifeedback.config import ConfigError

    with pytest.raises(ConfigError, match="lora_alpha"):
        tiny_train(human, tmp_path / "r4", lora_alpha=4.0)


def test_recipes_load_and_tiny_recipe_runs_from_the_cli(human, tmp_path):
    from typer.testing import CliRunner

    from aifeedback.cli import app
    from aifeedback.recipe import list_recipes, load_stage_config
    from aifeedback.stages.train import TrainConfig

    names = [n for n, (p, _) in list_recipes().items() if "train:" in p.read_text()]
    assert {"sdxl_dpo_pickapic", "sd15_dpo_pickapic", "sdxl_dpo_pickascore", "sdxl_lora_dpo",
            "aif_pipeline_sdxl_pickscore", "tiny_dpo_sd15", "tiny_dpo_sdxl_lora"} <= set(names)
    for name in names:
        load_stage_config(TrainConfig, "train", name, {})
    paper = load_stage_config(TrainConfig, "train", "sdxl_dpo_pickapic", {})
    assert (paper.beta, paper.optimizer, paper.resolution, paper.batch_size * paper.grad_accum * 16) == (
        5000, "adafactor", 1024, 2048)
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app, ["train", "--recipe", "tiny_dpo_sdxl_lora", "--dataset", str(human), "--out", str(out), "--max-steps", "2"]
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["export", str(out), "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "exp" / "pytorch_lora_weights.safetensors").exists()
    res = CliRunner().invoke(
        app, ["train", "--recipe", "tiny_dpo_sd15", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "could not load dataset" in res.output


def test_targets_follow_the_prediction_type(tiny_sd15):
    from diffusers import DDPMScheduler

    from aifeedback.families.base import training_target

    lat, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    eps = DDPMScheduler(prediction_type="epsilon")
    v = DDPMScheduler(prediction_type="v_prediction")
    assert torch.equal(training_target(eps, lat, noise, t), noise)
    a = v.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - v.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(training_target(v, lat, noise, t), a * noise - s * lat, atol=1e-6)
    with pytest.raises(ValueError, match="prediction_type"):
        training_target(DDPMScheduler(prediction_type="sample"), lat, noise, t)


def test_resume_refuses_another_process_count_and_tolerates_a_torn_metrics_line(human, tmp_path):
    import json

    from aifeedback.stages.train import run

    out = run(tiny_train(human, tmp_path / "run", max_steps=1, checkpoint_every=1))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "loss": 0.6')  # a kill in the middle of writing step 2's line
    state_file = out / "checkpoints" / "checkpoint-000001" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["processes"] == 1
    state_file.write_text(json.dumps(dict(state, processes=2)))
    with pytest.raises(AifError, match="2 processes"):
        run(tiny_train(human, out, max_steps=2, checkpoint_every=1))
    state_file.write_text(json.dumps(state))
    run(tiny_train(human, out, max_steps=2, checkpoint_every=1))
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


@pytest.mark.parametrize("stats", [False, True])
def test_vae_encoding_is_the_inverse_of_generate_decoding(tiny_sd15, stats):
    """Latents from training's encoder decode (with generate's decoder) to what the VAE itself decodes, also for
    VAEs that declare per-channel latents_mean / latents_std."""
    import numpy as np
    from diffusers import DiffusionPipeline

    from aifeedback.families.base import encode_images
    from aifeedback.families.sampling import decode_latents

    pipe = DiffusionPipeline.from_pretrained(tiny_sd15)
    if stats:
        pipe.vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 2.0, 1.0, 1.5])
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(1)
    z = encode_images(pipe.vae, x)
    torch.manual_seed(1)
    raw = pipe.vae.encode(x).latent_dist.sample()
    ours = np.asarray(decode_latents(pipe, z)[0], dtype=np.float32)
    direct = pipe.image_processor.postprocess(pipe.vae.decode(raw).sample.detach(), output_type="pil")[0]
    assert np.abs(ours - np.asarray(direct, dtype=np.float32)).max() <= 1


def poison_steps(monkeypatch, steps):
    """Make the loss NaN (and so every gradient) in the given optimizer steps, as an overflow would."""
    from aifeedback.stages.train import TrainRecipe

    real = TrainRecipe._step

    def step(self, batch):
        if self.step + 1 not in steps:
            return real(self, batch)
        loss_fn = self.loss_fn
        self.loss_fn = lambda *a: (lambda loss, metrics: (loss * float("nan"), metrics))(*loss_fn(*a))
        try:
            return real(self, batch)
        finally:
            self.loss_fn = loss_fn

    monkeypatch.setattr(TrainRecipe, "_step", step)


def test_a_nonfinite_loss_stops_before_the_update_or_is_skipped_when_asked(human, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from aifeedback.stages.train import run

    def weights(step):
        path = tmp_path / "run" / "checkpoints" / f"checkpoint-{step:06d}" / "pytorch_lora_weights.safetensors"
        return load_file(path)

    poison_steps(monkeypatch, {3})
    kw = dict(model="tiny-sd15", lora_rank=2, max_steps=4, checkpoint_every=2)
    with pytest.raises(AifError, match=r"step 3: the loss is not finite.*last good checkpoint is "
                                       r".*checkpoint-000002: rerun the same command with --skip-nonfinite N"):
        run(tiny_train(human, tmp_path / "run", **kw))
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["checkpoint-000002"]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]

    run(tiny_train(human, tmp_path / "run", **dict(kw, skip_nonfinite=1, checkpoint_every=1)))  # resumes at 2
    m = read_metrics(tmp_path / "run")
    assert [r["step"] for r in m] == [1, 2, 3, 4] and [r.get("skipped_nonfinite") for r in m[2:]] == [1, 1]
    assert all(torch.equal(weights(2)[k], weights(3)[k]) for k in weights(2))  # step 3 made no update
    assert all(torch.isfinite(v).all() for v in weights(4).values())
    assert any(not torch.equal(weights(3)[k], weights(4)[k]) for k in weights(3))  # step 4 trained again
    poison_steps(monkeypatch, {5, 6})
    with pytest.raises(AifError, match="step 6: the loss is not finite"):  # 1 skip so far + 2 > 2
        run(tiny_train(human, tmp_path / "run", **dict(kw, skip_nonfinite=2, max_steps=6, checkpoint_every=1)))


_POISONED_RANK = """
import time

from aifeedback.cli import main
import aifeedback.stages.train_checkpoint as train_checkpoint
from aifeedback.stages.train import TrainRecipe

real = TrainRecipe._step
real_save = train_checkpoint.save_state


def late_save(folder, optimizer, lr_sched, scaler, acc_step, rank, is_main):
    if rank == 1:  # process 1 writes its share of a checkpoint late, as on a loaded machine
        time.sleep(3)
    return real_save(folder, optimizer, lr_sched, scaler, acc_step, rank, is_main)


def step(self, batch):  # NaN loss on process 1 only, at step 2: only the gradient all-reduce would spread it
    if self.rank == 1 and self.step + 1 == 2:
        loss_fn = self.loss_fn
        self.loss_fn = lambda *a: (lambda loss, metrics: (loss * float("nan"), metrics))(*loss_fn(*a))
        try:
            return real(self, batch)
        finally:
            self.loss_fn = loss_fn
    return real(self, batch)


TrainRecipe._step = step
train_checkpoint.save_state = late_save
main()
"""


def test_processes_agree_to_stop_on_one_process_nonfinite_loss(human, tmp_path):
    script = tmp_path / "poisoned.py"
    script.write_text(_POISONED_RANK)
    launch = accelerate_launch(2)
    cmd = [*launch[: launch.index("-m", 3)], str(script),
           "train", "--dataset", str(human), "--model", "tiny-sd15", "--resolution", "16", "--batch-size", "1",
           "--lora-rank", "2", "--max-steps", "3", "--checkpoint-every", "1", "--validation-every", "0",
           "--num-workers", "0", "--trackers", "none", "--out", str(tmp_path / "run")]
    res = run_group(cmd, env=_env(), timeout=300)
    assert res.returncode != 0
    # both processes stop at the same step (no hang in a collective: the run ends well before the timeout) with the
    # clear error; the launcher may end the second process before it prints, so at least one prints it
    errors = re.findall(r"error: step 2: the loss is not finite \(NaN or inf\) on 1 of 2 processes.*checkpoint-000001",
                        res.stderr)
    assert 1 <= len(errors) <= 2, res.stderr[-3000:]
    # no temporary folder beside it: the checkpoint is renamed only once every process has written its part
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["checkpoint-000001"]
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-000001" / "rng-1.safetensors").exists()


def _tracked(event_file: Path) -> tuple[dict, dict]:
    """({(tag, step): decoded RGB pixels}, {(tag, step): text}) of the images and texts in a tensorboard event file."""
    import io

    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, TENSORS, EventAccumulator

    acc = EventAccumulator(str(event_file), size_guidance={IMAGES: 0, TENSORS: 0})  # 0: keep all, not a sample
    acc.Reload()
    images = {(tag, ev.step): np.asarray(Image.open(io.BytesIO(ev.encoded_image_string)).convert("RGB"))
              for tag in acc.Tags()[IMAGES] for ev in acc.Images(tag)}
    texts = {(tag, ev.step): ev.tensor_proto.string_val[0].decode() for tag in acc.Tags()[TENSORS]
             for ev in acc.Tensors(tag) if ev.tensor_proto.string_val}
    return images, texts


def test_validation_images_reach_tensorboard_with_a_step0_baseline_once(human, tmp_path):
    """Step 0 (untrained) and step 1 grids land in the event file as one tag per prompt/seed, equal to the PNG grid's
    cells; the resumed run does not redo step 0; and the validation forwards leave training bitwise unchanged."""
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    from aifeedback.stages.train import run

    prompts, seeds = ["a red cat", "a blue dog"], [1, 2]
    kw = dict(validation_every=1, validation_steps=2, validation_prompts=prompts, validation_seeds=seeds,
              trackers="tensorboard", checkpoint_every=1, keep_checkpoints=0)
    out = run(tiny_train(human, tmp_path / "run", **dict(kw, max_steps=1)))
    first = sorted((out / "logs").rglob("events.out.tfevents.*"))
    images, texts = {}, {}
    for f in first:
        found = _tracked(f)
        images.update(found[0])
        texts.update(found[1])
    tags = [f"validation/p{i}_seed{s}" for i in range(2) for s in seeds]
    assert sorted(images) == sorted((tag, step) for tag in tags for step in (0, 1))
    for step in (0, 1):
        grid = np.asarray(Image.open(out / "validation" / f"step-{step:06d}.png").convert("RGB"))
        for k, tag in enumerate(tags):  # grid cell (row = prompt, column = seed) k, 16 px square
            r, c = divmod(k, len(seeds))
            np.testing.assert_array_equal(images[tag, step], grid[16 * r:16 * (r + 1), 16 * c:16 * (c + 1)])
    assert images[tags[0], 0].std() > 0  # a drawn image, not a blank canvas
    legend = texts["validation/prompts/text_summary", 0]  # torch's add_text appends /text_summary
    assert "p0: a red cat" in legend and "p1: a blue dog" in legend and "seeds: 1, 2" in legend

    (out / "validation" / "step-000000.png").unlink()
    run(tiny_train(human, tmp_path / "run", **dict(kw, max_steps=2)))  # resumes from checkpoint-000001
    assert not (out / "validation" / "step-000000.png").exists()
    assert (out / "validation" / "step-000002.png").exists()
    resumed = {}
    for f in set((out / "logs").rglob("events.out.tfevents.*")) - set(first):
        resumed.update(_tracked(f)[0])
    assert {step for _, step in resumed} == {2}

    plain = run(tiny_train(human, tmp_path / "plain", max_steps=2))  # no validation, no tracker
    name = "unet/diffusion_pytorch_model.safetensors"
    wa, wb = (load_file(d / "checkpoints/checkpoint-000002" / name) for d in (out, plain))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # validation forks the RNG: training is untouched


def test_validation_images_reach_wandb_captioned(monkeypatch):
    """wandb is optional (not installed here): a fake module and tracker receive captioned images at the step."""
    import sys
    from types import ModuleType, SimpleNamespace

    from PIL import Image

    from aifeedback.stages.train_validation import track_validation

    class FakeImage:
        def __init__(self, data, caption=None):
            self.data, self.caption = data, caption

    wandb = ModuleType("wandb")
    wandb.Image = FakeImage
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    logged = []
    tracker = SimpleNamespace(name="wandb", log=lambda values, step: logged.append((values, step)))
    cfg = SimpleNamespace(validation_prompts=["a red cat", "a blue dog"], validation_seeds=[0, 7])
    images = [Image.new("RGB", (4, 4), color) for color in ("red", "green", "blue", "white")]
    track_validation([tracker], cfg, images, 0)
    [(values, step)] = logged
    assert step == 0 and list(values) == ["validation"]
    assert [(im.data, im.caption) for im in values["validation"]] == [
        (images[0], "a red cat (seed 0)"), (images[1], "a red cat (seed 7)"),
        (images[2], "a blue dog (seed 0)"), (images[3], "a blue dog (seed 7)")]


@pytest.mark.slow  # a training process started from a script (~20 s); test_score checks the same for decoding workers
def test_data_workers_never_run_the_callers_unguarded_main(human, tmp_path):
    """`--num-workers N` loads pairs in DataLoader processes, which must not import the caller's unguarded script
    whatever the default start method (spawn on macOS, forkserver on Linux from Python 3.14)."""
    script = tmp_path / "launcher.py"
    script.write_text(SPAWNING_LAUNCHER)
    cmd = [sys.executable, str(script), "train", "--dataset", str(human), "--model", "tiny-sd15", "--resolution", "16",
           "--batch-size", "1", "--lora-rank", "2", "--max-steps", "1", "--validation-every", "0", "--num-workers",
           "1", "--trackers", "none", "--no-progress", "--out", str(tmp_path / "run")]
    res = run_group(cmd, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1]
