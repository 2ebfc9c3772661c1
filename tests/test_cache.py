"""`aif cache`: pairs encoded once into the family's posteriors and prompt conditioning; `aif train` on the cache
trains as on the images, and refuses a cache made for another setup."""

import json

import pytest
import torch

from aifeedback.errors import AifError
from tests.pairs_fixtures import pickapic_rows, read_metrics, tiny_train, write_pickapic


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    rows = pickapic_rows(6)
    rows[2]["label_0"] = rows[2]["label_1"] = 0.5  # a tie: left out of the cache as training leaves it out
    return write_pickapic(tmp_path_factory.mktemp("human"), rows)


def cache_config(dataset, out, **overrides):
    from aifeedback.config import build_config
    from aifeedback.stages.cache_config import CacheConfig

    values = dict(dataset=str(dataset), model="tiny-sd15", resolution=16, out=str(out), batch_size=2, shard_size=3,
                  progress=False)
    values.update(overrides)
    return build_config(CacheConfig, values)


@pytest.fixture(scope="module")
def cached(human, tmp_path_factory):
    from aifeedback.stages.cache import run

    return run(cache_config(human, tmp_path_factory.mktemp("c") / "cache"))


@pytest.mark.numerics
def test_training_on_the_cache_gives_the_loss_of_training_on_the_images(human, cached, tmp_path, capsys):
    from aifeedback.stages.train import run

    # SFT: its loss is the winners' denoising error, so it sees the latents, the prompts and the noise (the first
    # DPO loss is ln 2 whatever they are). Caption dropout and flip exercise the empty prompt and the mirrors.
    kw = dict(loss="sft", max_steps=2, caption_dropout=0.5, flip=True, seed=3)
    images = read_metrics(run(tiny_train(human, tmp_path / "images", **kw)))
    capsys.readouterr()
    cache = read_metrics(run(tiny_train(cached, tmp_path / "cache", **kw)))
    assert "no VAE or text encoder in the step" in capsys.readouterr().err
    # Same pairs, order, flips, dropout, posterior sample and noise: the one difference is that the cache ran the
    # encoders on other batches than the step does, and CPU kernels may sum in another order for another batch
    # size (float32 round-off, ~1e-7 relative); two steps of training keep it far below 1e-5.
    for a, b in zip(images, cache, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_a_cache_made_for_another_setup_is_refused_naming_each_difference(cached, tmp_path):
    from aifeedback.stages.train import run

    with pytest.raises(AifError, match=r"resolution: the cache has 16, this run 32.*aif cache --dataset \S+ "
                                       r"--model tiny-sd15 --resolution 32 --flip --mixed-precision no --out"):
        run(tiny_train(cached, tmp_path / "r1", resolution=32))
    with pytest.raises(AifError, match=r"centre crops only: --random-crop needs the images"):
        run(tiny_train(cached, tmp_path / "r2", random_crop=True))
    with pytest.raises(AifError, match=r"model: the cache has 'tiny-sd15', this run 'tiny-sdxl'; family: the cache "
                                       r"has 'sd15', this run 'sdxl'"):
        run(tiny_train(cached, tmp_path / "r3", model="tiny-sdxl"))
    with pytest.raises(AifError, match=r"mixed_precision: the cache has 'no', this run 'bf16'"):
        run(tiny_train(cached, tmp_path / "r4", mixed_precision="bf16"))


def test_cache_layout_resume_and_rerun(human, cached, tmp_path, capsys):
    import pyarrow.parquet as pq

    from aifeedback.data.cache import bytes_tensor
    from aifeedback.stages.cache import run

    manifest = json.loads((cached / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["pairs"] == 5 and manifest["counts"]["ties_dropped"] == 1
    assert manifest["key"]["flip"] and set(manifest["tensors"]) == {
        "image_0_0", "image_0_1", "image_1_0", "image_1_1", "prompt.embeds"}
    shards = sorted((cached / "data").glob("train-*.parquet"))
    assert len(shards) == 2  # 5 pairs in shards of 3
    row = pq.read_table(shards[0]).to_pylist()[0]
    image, mirror = (bytes_tensor(row[f"image_{o}_0"], manifest["tensors"][f"image_{o}_0"]) for o in (0, 1))
    assert image.shape == (8, 8, 8)  # the tiny VAE: mean and log variance of 4 channels at 16 / 2 px
    assert not torch.equal(image, mirror)
    # a run killed before its last shard: that shard is encoded again, to the same bytes
    before = pq.read_table(shards[1])
    shards[1].unlink()
    (cached / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    run(cache_config(human, cached))
    assert pq.read_table(shards[1]).equals(before) and json.loads((cached / "manifest.json").read_text())["complete"]
    capsys.readouterr()
    run(cache_config(human, cached))
    assert "already complete" in capsys.readouterr().out


@pytest.mark.numerics
@pytest.mark.slow
def test_two_processes_write_the_cache_of_one(human, cached, tmp_path):
    """Under `accelerate launch` the processes take shards round-robin; the shards are those of a 1-process run."""
    import os
    from pathlib import Path

    import pyarrow.parquet as pq

    from tests.launch import accelerate_launch, run_group

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "two"
    cmd = [*accelerate_launch(2), "cache", "--dataset", str(human), "--model", "tiny-sd15", "--resolution", "16",
           "--batch-size", "2", "--shard-size", "3", "--no-progress", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    res = run_group(cmd, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = (sorted((d / "data").glob("*.parquet")) for d in (cached, out))
    assert [p.name for p in one] == [p.name for p in two]
    for a, b in zip(one, two, strict=True):  # the same pairs, crops and captions; encoder outputs to round-off
        ta, tb = pq.read_table(a).to_pylist(), pq.read_table(b).to_pylist()
        assert [(r["row"], r["caption"], r["time_ids_1_0"]) for r in ta] == \
            [(r["row"], r["caption"], r["time_ids_1_0"]) for r in tb]
    assert json.loads((out / "manifest.json").read_text())["counts"]["processes"] == 2


def test_cache_reads_every_source_the_trainer_reads(tmp_path):
    """A ranked HPDv2 folder (images by path, pairs made per prompt) and a --columns mapping are cached like
    Pick-a-Pic, with the same options as `aif train`."""
    import pyarrow.parquet as pq

    from aifeedback.stages.cache import run
    from tests.layouts_fixtures import write_custom, write_hpdv2

    hpd = run(cache_config(write_hpdv2(tmp_path / "hpd"), tmp_path / "c-hpd", split="test",
                           ranked_pairs="best-worst", flip=False))
    rows = [r for f in sorted((hpd / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert [r["caption"] for r in rows] == ["test 0", "test 1"]  # one best-vs-worst pair per prompt, no mirrors
    assert "image_1_0" not in rows[0]
    custom = run(cache_config(write_custom(tmp_path / "custom"), tmp_path / "c-custom",
                              columns=["caption=text", "image_0=left", "image_1=right", "label=winner"]))
    counts = json.loads((custom / "manifest.json").read_text())["counts"]
    assert (counts["pairs"], counts["ties_dropped"]) == (3, 1)  # its "tie" row is left out


@pytest.mark.numerics
@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux", "tiny-z-image", "tiny-qwen-image",
                                   "tiny-flux2-klein"])
def test_families_added_later_are_cached_without_new_code(model, human, tmp_path):
    """Flow-matching families (16-channel VAE with a shift, T5 + CLIP prompts; FLUX packs latents in its denoiser
    call; Z-Image's prompts are padded states with a boolean mask, its latents the posterior's mode; Qwen-Image's
    video-style VAE encodes a frame axis, which the cache drops; FLUX.2's latents are normalised by the real VAE's
    batch-norm statistics, which the stand-in VAE must pass through): the cache
    stores whatever their encode_images / encode_prompts take and return, so the first SFT loss
    from the cache is the one from the images (to float round-off: the encoders ran on other batches)."""
    from aifeedback.stages.cache import run as cache
    from aifeedback.stages.train import run

    cached = cache(cache_config(human, tmp_path / "cache", model=model))
    kw = dict(model=model, loss="sft", max_steps=1, seed=1)
    images = read_metrics(run(tiny_train(human, tmp_path / "images", **kw)))
    from_cache = read_metrics(run(tiny_train(cached, tmp_path / "from-cache", **kw)))
    assert from_cache[0]["loss"] == pytest.approx(images[0]["loss"], rel=1e-5)


@pytest.mark.parametrize("damage", ["truncated manifest", "dtype", "shape"])
def test_a_damaged_cache_header_is_one_line_naming_the_file(cached, tmp_path, damage):
    """The cache's manifest (its header: key and tensor specs) damaged: one line naming it and what to do, before
    any model loads, instead of a JSON traceback or wrong tensors in a DataLoader worker."""
    import json
    import shutil

    from aifeedback.stages.train import run

    copy = tmp_path / "cache"
    shutil.copytree(cached, copy)
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    column = sorted(manifest["tensors"])[0]
    if damage == "truncated manifest":
        path.write_text(path.read_text()[:100])
    elif damage == "dtype":
        manifest["tensors"][column]["dtype"] = "__class__"
        path.write_text(json.dumps(manifest))
    else:
        manifest["tensors"][column]["shape"][0] += 1
        path.write_text(json.dumps(manifest))
    wanted = {"truncated manifest": "manifest.json: unreadable", "dtype": "manifest.json: a damaged `aif cache` "
              f"\\(header: the tensor spec of {column}", "shape": f"a damaged `aif cache` \\({column} holds"}[damage]
    with pytest.raises(AifError, match=wanted) as e:
        run(tiny_train(copy, tmp_path / "run"))
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)
