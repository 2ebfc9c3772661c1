"""The offline tiny-model zoo: real architectures, deterministic weights, the real CLIP tokenizer."""

import hashlib
import re
from importlib.metadata import entry_points

import pytest
import torch

from aifeedback.zoo.cache import ZOO_VERSION


def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-sd15", "tiny-sd3", "tiny-sdxl-refiner"])
def test_tiny_pipeline_is_deterministic(name, tmp_path):
    from diffusers import DiffusionPipeline

    from aifeedback.zoo import ZOO

    build = ZOO[name].build
    hashes = []
    for i in range(2):
        build(tmp_path / str(i))
        pipe = DiffusionPipeline.from_pretrained(tmp_path / str(i))
        hashes.append({k: _weights_hash(m) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)})
    assert hashes[0] == hashes[1]
    assert ("unet" in hashes[0] or "transformer" in hashes[0]) and "vae" in hashes[0]


def test_tiny_sdxl_has_sdxl_architecture(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    from aifeedback.families import family
    from aifeedback.families.loading import load_pipeline

    pipe = load_pipeline("tiny-sdxl")
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert family(pipe) == "sdxl"
    assert pipe.text_encoder_2 is not None and pipe.unet.config.addition_embed_type == "text_time"
    image = pipe("a red cube", num_inference_steps=2, height=32, width=32,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_tiny_sd15_loads(tiny_sd15):
    from diffusers import StableDiffusionPipeline

    from aifeedback.families import family
    from aifeedback.families.loading import load_pipeline

    pipe = load_pipeline("tiny-sd15")
    assert isinstance(pipe, StableDiffusionPipeline) and family(pipe) == "sd15"


def test_cached_build_reuses_folder(tiny_sd15):
    from aifeedback.zoo import tiny_pipeline_path

    assert tiny_pipeline_path("tiny-sd15") == tiny_sd15
    assert (tiny_sd15 / ".complete").exists() and (tiny_sd15 / "model_index.json").exists()


def test_offline_tokenizer_matches_open_clip():
    import open_clip

    from aifeedback.zoo.tokenizer import clip_tokenizer

    tok = clip_tokenizer()
    texts = ["a photo of a cat", "An astronaut riding a horse on Mars, 4k!", "naïve café: 123 ~ é", "  spaced   out  "]
    ref = open_clip.tokenize(texts)
    ours = tok(texts, padding="max_length", max_length=77, truncation=True).input_ids
    for r, o in zip(ref.tolist(), ours):
        n = r.index(49407) + 1  # open_clip pads with 0, HF with the pad token: compare up to end-of-text
        assert o[:n] == r[:n]
    assert len(tok) == 49408


def test_unknown_model_error_is_actionable():
    from aifeedback.families.loading import load_pipeline
    from aifeedback.families.resolve import ModelLoadError

    with pytest.raises(ModelLoadError) as exc:
        load_pipeline("nonexistent/model")
    msg = str(exc.value)
    assert "nonexistent/model" in msg and "tiny-sdxl" in msg and "Fix:" in msg
    # the download command it recommends is one the pinned huggingface_hub installs (`huggingface-cli` is gone)
    command = re.search(r"`(\S+) download nonexistent/model`", msg).group(1)
    scripts = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("huggingface_hub")}
    assert command in scripts


def _build_on_rank(rank: int, init_file: str, cache: str) -> None:
    import os

    import torch.distributed as dist

    os.environ["AIF_CACHE"] = cache
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        if rank == 1:  # the non-zero rank wins the build, as it may under `accelerate launch`
            from aifeedback.scoring.scorers.pickscore import build_tiny
            from aifeedback.zoo.cache import cached_build

            cached_build("scorer-pickscore-tiny", build_tiny)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # a 2-process gloo group plus a spawned builder (~10 s of CPU) for a rare launch-time path
def test_a_model_built_by_a_nonzero_rank_is_complete(tmp_path):
    # transformers' save_pretrained writes nothing on rank != 0 of a process group; the cache must not end up
    # with a folder that has a config-less, weight-less model marked complete.
    import torch.multiprocessing as mp

    cache = tmp_path / "cache"
    mp.spawn(_build_on_rank, args=(str(tmp_path / "init"), str(cache)), nprocs=2)
    folder = cache / "models" / f"scorer-pickscore-tiny-v{ZOO_VERSION}"
    assert (
        (folder / ".complete").exists()
        and (folder / "model.safetensors").exists()
        and (folder / "config.json").exists()
    )


def test_building_a_model_leaves_the_callers_random_state_alone(tmp_path, monkeypatch):
    # A stage seeds torch, then loads its model: a first run on a fresh cache (which builds the model) must draw
    # the same noise as every later run.
    from aifeedback.zoo import tiny_pipeline_path

    monkeypatch.setenv("AIF_CACHE", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_pipeline_path("tiny-sd15")
    assert torch.equal(torch.rand(3), expected)
