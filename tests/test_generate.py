"""`aif generate` on the tiny models: output layout, determinism, resume after SIGKILL, multi-process, bad input."""

import io as _io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aifeedback.config import ConfigError, build_config
from aifeedback.data.prompts import prompt_id
from aifeedback.families.sampling import image_seed
from aifeedback.stages.generate import ROW_FIELDS, GenerateConfig, run
from aifeedback.storage.manifest import OutputConflictError, read_manifest
from aifeedback.storage.shards import bytes_to_latent, read_rows, shard_files
from tests.launch import accelerate_launch, process_group, run_group

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red cat", "a blue dog", "a green tree", "", "a red cat", "a yellow car", "an old boat"]
FAST = dict(steps=2, images_per_prompt=2, shard_size=4, batch_size=3)


def cfg(out, prompts, **kw):
    return build_config(GenerateConfig, {"model": "tiny-sdxl", "prompts": str(prompts), "out": str(out), **FAST, **kw})


def rows_by_key(out):
    return {(r["prompt_id"], r["k"]): r for r in read_rows(out)}


def pixels(row):
    return np.asarray(Image.open(_io.BytesIO(row["image"])), dtype=np.int16)


def same_image(a, b):
    # Batched kernels differ from unbatched ones by ~1e-5; after quantising to 8 bits that is at most 1 level.
    return np.abs(pixels(a) - pixels(b)).max() <= 1


FP16_EPS = 2.0**-10  # float16's relative rounding step: saved latents are float16


def latent(row):
    return bytes_to_latent(row["latent"], row["latent_shape"]).float()


def cli_env():
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("prompts") / "p.txt"
    f.write_text("\n".join(PROMPTS) + "\n")
    return f


@pytest.fixture(scope="module")
def baseline(tiny_sdxl, prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "base"
    run(cfg(out, prompt_file, save_latents=True))
    return out


def test_output_layout_rows_and_manifest(baseline):
    import datasets

    rows = read_rows(baseline)
    texts = ["a red cat", "a blue dog", "a green tree", "a yellow car", "an old boat"]  # empty + repeat dropped
    assert len(rows) == 10
    assert set(rows[0]) == set(ROW_FIELDS) | {"latent", "latent_shape"}
    assert [(r["prompt"], r["k"]) for r in rows] == [(t, k) for t in texts for k in range(2)]
    for r in rows:
        assert r["prompt_id"] == prompt_id(r["prompt"]) and r["category"] is None
        assert r["seed"] == image_seed(0, r["prompt_id"], r["k"])
        assert (r["width"], r["height"], r["steps"], r["guidance"]) == (32, 32, 2, 5.0)
        assert r["model"] == "tiny-sdxl" and r["scheduler"] == "EulerDiscreteScheduler"
        im = Image.open(_io.BytesIO(r["image"]))
        assert im.format == "JPEG" and im.size == (32, 32)
        assert r["latent_shape"] == [4, 16, 16] and len(r["latent"]) == 4 * 16 * 16 * 2
    assert len({r["seed"] for r in rows}) == 10
    assert len({r["image"] for r in rows}) == 10
    assert [p.name for p in shard_files(baseline)] == ["train-00000.parquet", "train-00001.parquet",
                                                       "train-00002.parquet"]
    manifest = read_manifest(baseline, "generate")
    assert manifest["complete"] and manifest["counts"]["images"] == 10 and manifest["counts"]["prompts"] == 5
    assert (
        manifest["resolved"]["width"] == 32
        and manifest["inputs"]["n_prompts"] == 5
        and (baseline / "config.yaml").exists()
    )
    ds = datasets.load_dataset("parquet", data_dir=str(baseline))["train"]
    assert ds.num_rows == 10 and ds[0]["image"] == rows[0]["image"]


def test_latent_decodes_to_the_stored_image(baseline):
    from aifeedback.families.loading import load_pipeline
    from aifeedback.families.sampling import decode_latents, encode_image

    row = read_rows(baseline)[3]
    latent = bytes_to_latent(row["latent"], row["latent_shape"])[None]
    image = decode_latents(load_pipeline("tiny-sdxl"), latent)[0]
    again = pixels({"image": encode_image(image, "jpeg", 95)})
    assert np.abs(again - pixels(row)).mean() < 0.5  # the float16 latent moves a few pixels by a level or two


def test_images_do_not_depend_on_batch_size_or_other_prompts(baseline, tmp_path):
    subset = tmp_path / "subset.txt"
    subset.write_text("a new prompt\nan old boat\na blue dog\n")
    out = tmp_path / "subset"
    run(cfg(out, subset, batch_size=1, shard_size=5))
    base, other = rows_by_key(baseline), rows_by_key(out)
    shared = [key for key in other if key in base]
    assert len(shared) == 4 and len(other) == 6
    for key in shared:
        assert other[key]["seed"] == base[key]["seed"]
        assert same_image(other[key], base[key])


@pytest.mark.slow  # compiling the UNet takes ~30 s of CPU on a cold inductor cache; --compile is a speed option
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="torch.compile on CPU needs a C compiler")
def test_compiled_unet_gives_the_same_images(prompt_file, tmp_path):
    # --compile is a speed option only: the whole UNet compiles as one graph (fullgraph, so a graph break fails
    # here rather than silently running eager) and the images match eager ones rendered in the same batches (one
    # batch of 4 here: one compiled graph). Inductor fuses ops and reorders float sums, so the latents drift from
    # eager by float32 rounding amplified over the steps (up to ~3e-4 measured, |latent| < 8: atol), and float16
    # storage can round such a pair of values to neighbouring float16s (one step = at most FP16_EPS * |x|: rtol).
    # PNG, not JPEG: re-encoding can turn a 1-level pixel difference into a larger one.
    kw = dict(save_latents=True, limit=2, batch_size=4, image_format="png")
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run(cfg(eager, prompt_file, **kw))
    run(cfg(compiled, prompt_file, compile=True, compile_mode="default", **kw))
    base, other = rows_by_key(eager), rows_by_key(compiled)
    assert len(other) == 4 and other.keys() == base.keys()
    for key, row in other.items():
        assert same_image(row, base[key])
        torch.testing.assert_close(latent(row), latent(base[key]), rtol=2 * FP16_EPS, atol=4 * FP16_EPS)


def test_rerun_resumes_and_different_job_is_refused(baseline, prompt_file):
    before = {p.name: p.stat().st_mtime_ns for p in shard_files(baseline)}
    run(cfg(baseline, prompt_file, save_latents=True, batch_size=2))  # batch size is not part of the job
    assert {p.name: p.stat().st_mtime_ns for p in shard_files(baseline)} == before
    with pytest.raises(OutputConflictError, match=r"differs in: steps: 2 -> 3.*--overwrite"):
        run(cfg(baseline, prompt_file, save_latents=True, steps=3))


def test_overwrite_replaces_another_job(tmp_path, prompt_file):
    out = tmp_path / "o"
    run(cfg(out, prompt_file, limit=2, images_per_prompt=1))
    first = read_rows(out)
    run(cfg(out, prompt_file, limit=2, images_per_prompt=1, seed=7, overwrite=True))
    second = read_rows(out)
    assert [r["seed"] for r in second] == [image_seed(7, r["prompt_id"], 0) for r in first]
    assert read_manifest(out)["identity"]["seed"] == 7


def test_sd15_options(tiny_sd15, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"caption": "a cat", "category": "Animals"}\n{"caption": "a dog"}\n')
    out = tmp_path / "sd15"
    run(build_config(GenerateConfig, dict(
        model="tiny-sd15", prompts=str(prompts), out=str(out), steps=2, images_per_prompt=2, width=48, height=32,
        negative_prompt="blurry", scheduler="euler_a", guidance=3.0, image_format="png", seed=5, batch_size=4)))
    rows = read_rows(out)
    assert len(rows) == 4 and [r["category"] for r in rows] == ["Animals", "Animals", None, None]
    assert {(r["width"], r["height"], r["guidance"], r["scheduler"]) for r in rows} == {
        (48, 32, 3.0, "EulerAncestralDiscreteScheduler")
    }
    assert Image.open(_io.BytesIO(rows[0]["image"])).format == "PNG"
    # ancestral sampling draws fresh noise every step, from each image's own generator
    again = tmp_path / "sd15b"
    run(build_config(GenerateConfig, dict(
        model="tiny-sd15", prompts=str(prompts), out=str(again), steps=2, images_per_prompt=2, width=48, height=32,
        negative_prompt="blurry", scheduler="euler_a", guidance=3.0, image_format="png", seed=5, batch_size=1)))
    assert all(same_image(a, b) for a, b in zip(rows, read_rows(again)))


def test_parti_source_carries_category(tiny_sdxl, tmp_path):
    out = tmp_path / "parti"
    run(cfg(out, "parti", limit=3, images_per_prompt=1))
    rows = read_rows(out)
    assert [(r["prompt"], r["category"]) for r in rows] == [("bond", "Abstract"), ("element", "Abstract"),
                                                            ("molecule", "Abstract")]


def test_sigkill_then_rerun_equals_uninterrupted_run(tiny_sdxl, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(24)) + "\n")
    args = ["--model", "tiny-sdxl", "--prompts", str(prompts), "--steps", "2", "--images-per-prompt", "1",
            "--shard-size", "1", "--batch-size", "1"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "aifeedback", "generate", *args, "--out", str(killed)]
    with process_group(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.time() + 120
        while not shard_files(killed) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = len(shard_files(killed))
    assert 0 < done < 24, f"the kill should land mid-run ({done} of 24 shards written)"
    assert not read_manifest(killed)["complete"]
    same = {"prompts": str(prompts), "model": "tiny-sdxl", "steps": 2, "images_per_prompt": 1, "shard_size": 1,
            "batch_size": 1}
    run(build_config(GenerateConfig, dict(same, out=str(killed))))  # the rerun (in-process, to save a start-up)
    whole = tmp_path / "whole"
    run(build_config(GenerateConfig, dict(same, out=str(whole))))
    assert read_rows(killed) == read_rows(whole)
    assert read_manifest(killed)["counts"]["images"] == 24
    assert not list((killed / "data").glob(".*"))  # no temporary files left behind


@pytest.mark.slow  # three processes starting torch (~17 s of CPU); test_score and test_train cover launch by default
def test_two_processes_split_the_work_and_match_one(baseline, prompt_file, tmp_path):
    out = tmp_path / "two"
    cmd = [*accelerate_launch(2), "generate", "--model", "tiny-sdxl",
           "--prompts", str(prompt_file), "--out", str(out), "--save-latents", "--device", "cpu",
           *[x for k, v in FAST.items() for x in (f"--{k.replace('_', '-')}", str(v))]]
    result = run_group(cmd, env=cli_env(), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_rows(out) == read_rows(baseline)
    manifest = read_manifest(out, "generate")
    assert manifest["complete"] and manifest["counts"]["images"] == 10 and manifest["counts"]["shards"] == 3
    assert manifest["counts"]["processes"] == 2


def test_unknown_model_fails_fast_and_plainly(prompt_file, tmp_path):
    t = time.time()
    result = run_group([sys.executable, "-m", "aifeedback", "generate", "--model", "nonexistent/model",
                        "--prompts", str(prompt_file), "--out", str(tmp_path / "o")],
                       env=cli_env(), timeout=60)
    assert time.time() - t < 10
    assert result.returncode == 2
    assert "nonexistent/model" in result.stderr and "Fix:" in result.stderr and "tiny-sdxl" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_bad_inputs_are_refused_before_writing(tiny_sdxl, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(Exception, match="does not exist"):
        run(cfg(out, tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(Exception, match="is empty"):
        run(cfg(out, empty))
    assert not out.exists()
    with pytest.raises(ConfigError) as e:
        build_config(GenerateConfig, {"steps": 0, "images_per_prompt": -1, "image_format": "gif",
                                      "jpeg_quality": 101, "scheduler": "nope"})
    assert len(e.value.problems) == 5
    with pytest.raises(ConfigError, match="resolution: must be a multiple of 8, got 30"):
        build_config(GenerateConfig, {"resolution": 30})


def test_model_check_needs_no_heavy_imports(tmp_path):
    from aifeedback.families.resolve import ModelLoadError, check_available

    check_available("tiny-sd15")
    check_available(str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"(?s)'./no/such/folder': no such local folder.*Fix:"):
        check_available("./no/such/folder")
    with pytest.raises(ModelLoadError, match=r"(?s)VAE 'someone/missing-vae'.*Fix:.*tiny-sdxl"):
        check_available("someone/missing-vae", "VAE")


def test_retrained_tuned_weights_at_the_same_path_are_a_new_job(tmp_path):
    """A run retrained with --overwrite keeps its checkpoint names: generate (and so eval and the demo) must not take
    its old images for the new weights' ("already complete")."""
    from aifeedback.stages.generate import completed
    from aifeedback.stages.train import run as train
    from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic

    data = write_pickapic(tmp_path / "data", pickapic_rows(2))
    train(tiny_train(data, tmp_path / "run", model="tiny-sdxl", lora_rank=2, max_steps=1, checkpoint_every=1))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\n")
    gen = cfg(tmp_path / "gen", prompts, tuned=str(tmp_path / "run"), resolution=16, images_per_prompt=1)
    run(gen)
    assert completed(gen) is not None
    train(tiny_train(data, tmp_path / "run", model="tiny-sdxl", lora_rank=2, max_steps=1, checkpoint_every=1,
                     lr=1e-2, overwrite=True))  # the same checkpoint-000001 path, other weights
    assert completed(gen) is None
