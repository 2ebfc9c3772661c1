"""`aif sample` on the tiny SD1.5 model: files, grid, tuned weights, same images as `aif generate`, resume."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from aifeedback.config import build_config
from aifeedback.stages.sample import SampleConfig, pin_tuned, run
from aifeedback.storage.manifest import OutputConflictError

PROMPTS = "a red cube\na blue sphere\n"


def perturbed_unet(src, dest, scale=0.5, seed=0):
    """A copy of a pipeline's UNet with noise added to every weight: a stand-in 'tuned' model."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(scale * p.std().nan_to_num(0) * torch.randn(p.shape, generator=g))
    unet.save_pretrained(dest)
    return dest


def _cfg(tmp_path, model, **kw):
    (tmp_path / "p.txt").write_text(PROMPTS)
    values = dict(model=str(model), prompts=str(tmp_path / "p.txt"), images_per_prompt=2, steps=2, resolution=16,
                  batch_size=3, grid_cell=32, out=str(tmp_path / "out"))
    return build_config(SampleConfig, {**values, **kw})


def _metadata(out):
    return [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_sample_files_grid_and_resume(tmp_path, tiny_sd15):
    cfg = _cfg(tmp_path, tiny_sd15)
    paths = run(cfg)
    assert [p.name for p in paths] == ["0000_0.png", "0000_1.png", "0001_0.png", "0001_1.png"]
    assert all(Image.open(p).size == (16, 16) for p in paths)
    assert Image.open(tmp_path / "out" / "grid.png").size == (2 * 32, 2 * 32)
    index = _metadata(tmp_path / "out")
    assert [r["file_name"] for r in index] == [p.name for p in paths]
    assert all(p.parent == tmp_path / "out" / "train" for p in paths)
    assert [(r["prompt"], r["k"]) for r in index] == [("a red cube", 0), ("a red cube", 1), ("a blue sphere", 0),
                                                      ("a blue sphere", 1)]
    assert len({r["seed"] for r in index}) == 4

    # A rerun of the same job renders nothing: a file it would rewrite keeps its (marked) content.
    paths[0].write_bytes(paths[1].read_bytes())
    run(cfg)
    assert paths[0].read_bytes() == paths[1].read_bytes()

    # A different job into the same folder is refused, and replaces the old images with --overwrite.
    other = _cfg(tmp_path, tiny_sd15, seed=5)
    with pytest.raises(OutputConflictError, match="seed"):
        run(other)
    run(build_config(SampleConfig, {**vars(other), "overwrite": True}))
    assert not np.array_equal(_pixels(paths[0]), _pixels(paths[1]))


@pytest.mark.numerics
def test_sample_matches_generate_and_tuned_changes_images(tmp_path, tiny_sd15):
    from aifeedback.stages.generate import GenerateConfig
    from aifeedback.stages.generate import run as generate
    from aifeedback.storage.shards import read_rows

    gen_out = tmp_path / "gen"
    (tmp_path / "q.txt").write_text(PROMPTS)
    generate(build_config(GenerateConfig, dict(model=str(tiny_sd15), prompts=str(tmp_path / "q.txt"),
                                               images_per_prompt=2, steps=2, resolution=16, image_format="png",
                                               out=str(gen_out))))
    rows = {(r["prompt"], r["k"]): r for r in read_rows(gen_out)}
    paths = run(_cfg(tmp_path, tiny_sd15, grid=False))
    index = _metadata(tmp_path / "out")
    for r, p in zip(index, paths):
        g = rows[(r["prompt"], r["k"])]
        assert g["seed"] == r["seed"]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(g["image"])).convert("RGB")), _pixels(p))

    unet = perturbed_unet(tiny_sd15, tmp_path / "tuned_unet")
    tuned = run(_cfg(tmp_path, tiny_sd15, tuned=str(unet), out=str(tmp_path / "tuned")))
    assert not np.array_equal(_pixels(tuned[0]), _pixels(paths[0]))


@pytest.mark.numerics
def test_sample_loads_as_an_imagefolder_with_prompts_and_without_the_grid(tmp_path, tiny_sd15):
    """`load_dataset("imagefolder", data_dir=OUT)` (offline, local) gives exactly the sampled images, in order,
    each with its prompt, seed and k; grid.png in the same folder is not one of them."""
    import datasets

    unet = perturbed_unet(tiny_sd15, tmp_path / "tuned_unet")
    cfg = _cfg(tmp_path, tiny_sd15, tuned=str(unet))
    paths = run(cfg)
    assert (tmp_path / "out" / "grid.png").exists()
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "hf"))
    assert list(ds) == ["train"]
    rows = list(ds["train"])
    assert [(r["prompt"], r["k"]) for r in rows] == [("a red cube", 0), ("a red cube", 1), ("a blue sphere", 0),
                                                     ("a blue sphere", 1)]
    assert [r["seed"] for r in rows] == [r["seed"] for r in _metadata(tmp_path / "out")]
    assert all(r["model"] == str(tiny_sd15) and r["tuned"] == str(unet) for r in rows)
    for r, p in zip(rows, paths, strict=True):  # the pixels of each file, not the grid's
        np.testing.assert_array_equal(np.asarray(r["image"].convert("RGB")), _pixels(p))


def test_pin_tuned_resolves_a_run_dir_to_its_latest_checkpoint(tmp_path):
    for step in (5, 20, 100):
        (tmp_path / "run" / "checkpoints" / f"checkpoint-{step:06d}").mkdir(parents=True)
    assert pin_tuned(str(tmp_path / "run")) == str(tmp_path / "run" / "checkpoints" / "checkpoint-000100")
    assert pin_tuned(str(tmp_path / "lora.safetensors")) == str(tmp_path / "lora.safetensors")
    assert pin_tuned(None) is None
