"""The benchmark scripts still run (their --tiny CPU mode), so they are ready when a GPU session needs them."""

import json
import os
import sys
from pathlib import Path

import pytest

from tests.launch import run_group

# ~70 s of CPU in fresh processes; they guard scripts used in GPU sessions, not the stages: `make test-slow`
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "generate": ["--tiny", "--images", "8"],
    "geneval": ["--tiny", "--images", "6", "--batch-size", "2", "--workers", "0"],
    # the real-size path bench/gpu.sh takes on a GPU, shrunk: SD1.5's architecture at 64 px, one step
    "generate-random-weights": ["--random-weights", "--family", "sd15", "--device", "cpu", "--dtype", "float32",
                                "--resolution", "64", "--steps", "1", "--batch-size", "1", "--images", "1"],
    "score": ["--tiny", "--images", "48", "--batch-size", "8", "--workers", "0"],
    "score-decode-only": ["--decode-only", "--device", "cpu", "--images", "48", "--batch-size", "8", "--workers", "1"],
    "train": ["--tiny", "--steps", "3", "--warmup", "1"],
    # the flow-matching path gpu.sh takes for FLUX.1 / SD3.5, on their tiny zoo transformers (LoRA, checkpointing)
    "train-flux": ["--tiny", "--family", "flux-dev", "--lora-rank", "4", "--gradient-checkpointing", "--steps", "2",
                   "--warmup", "1", "--mixed-precision", "no"],
    # gpu.sh's quantized-base LoRA steps (`aif train --base-quantization`), on the tiny FLUX transformer
    "train-flux-int8": ["--tiny", "--family", "flux-dev", "--lora-rank", "4", "--base-quantization", "int8",
                        "--steps", "2", "--warmup", "1"],
    "train-flux-nf4": ["--tiny", "--family", "flux-dev", "--lora-rank", "4", "--base-quantization", "nf4",
                       "--steps", "2", "--warmup", "1"],
    "train-sd35": ["--tiny", "--family", "sd35m", "--lora-rank", "4", "--gradient-checkpointing", "--steps", "2",
                   "--warmup", "1", "--mixed-precision", "no"],
    # aif rl's epochs (bench/rl.py) on tiny-sd3, and the real-size path gpu.sh takes, shrunk: SD1.5 at 64 px
    "rl": ["--tiny", "--family", "sd3", "--steps", "2", "--epochs", "2"],
    # flow_grpo_compare.py's side of aif rl: CFG in sampling and the update, T5 padded to flow_grpo's 128 tokens
    "rl-flow-grpo-work": ["--tiny", "--family", "sd3", "--steps", "2", "--epochs", "2", "--guidance-scale", "4.5",
                          "--t5-length", "128", "--lora-rank", "32"],
    # gpu.sh's UNet rl step (DDPO's DDIM), on tiny-sdxl: the first of 2 steps trained
    "rl-unet-fraction": ["--tiny", "--family", "sdxl", "--steps", "2", "--epochs", "1", "--group-size", "2",
                         "--prompts-per-epoch", "1", "--batch-size", "2", "--timestep-fraction", "0.5"],
    "rl-random-weights": ["--random-weights", "--family", "sd15", "--resolution", "64", "--steps", "1",
                          "--group-size", "2", "--prompts-per-epoch", "1", "--batch-size", "2", "--epochs", "1",
                          "--lora-rank", "2"],
    # gpu.sh's 2026-family steps (through aif's own family code), on their tiny zoo transformers
    "train-flux2-int8": ["--tiny", "--family", "flux2-dev", "--lora-rank", "4", "--base-quantization", "int8",
                         "--gradient-checkpointing", "--steps", "2", "--warmup", "1", "--mixed-precision", "no"],
    "train-qwen-image": ["--tiny", "--family", "qwen-image", "--lora-rank", "4", "--gradient-checkpointing",
                         "--steps", "2", "--warmup", "1", "--mixed-precision", "no"],
    "train-z-image": ["--tiny", "--family", "z-image", "--lora-rank", "4", "--gradient-checkpointing", "--steps", "2",
                      "--warmup", "1", "--mixed-precision", "no"],
}
# optional extras (torchao, bnb)
NEEDS = {"train-flux-int8": "torchao", "train-flux-nf4": "bitsandbytes", "train-flux2-int8": "torchao"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bench_script_runs(case, aif_cache):
    if case in NEEDS:
        pytest.importorskip(NEEDS[case])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = ROOT / "bench" / f"{case.split('-')[0]}.py"
    r = run_group([sys.executable, str(script), *CASES[case]], env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])  # every script ends with one JSON line of results
    speed = result.get("images_per_s", result.get("pairs_per_s"))
    assert speed == speed and speed > 0  # not NaN


def test_real_size_architectures_match_the_released_checkpoints():
    """bench/realsize.py builds what the hub holds: parameter counts of the released SDXL base / SD1.5 models."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import realsize
    finally:
        sys.path.remove(str(ROOT / "bench"))
    released = {  # parameters per component of stabilityai/stable-diffusion-xl-base-1.0 and stable-diffusion-v1-5
        "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
        "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    }
    for family, parts in released.items():
        pipe = realsize.build_pipeline(family, device="meta", dtype="float32")  # shapes only, nothing allocated
        counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in parts}
        assert counts == parts, family
        assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")


# Parameters of the released flow-matching checkpoints. FLUX.1: the bf16 safetensors totals of the hub repos'
# transformer/ (23,802,816,640 bytes for dev = 11,901,408,320 parameters; schnell 10,229,760 fewer: no guidance
# embedder), and the tensor count of FLUX.1-dev's vae/. SD3-medium (stabilityai/stable-diffusion-3-medium-diffusers,
# 2,028,328,000) anchors the MMDiT code path exactly; SD3.5 medium adds dual attention in its first 13 blocks, QK RMS
# norm and a 384 position grid, and both SD3.5 counts (2.24 B, 8.06 B) are what their config.json builds (the model
# cards round them to "2.5B" and "8.1B"; no exact published figure could be read offline). The text encoders: CLIP
# ViT-L/14 (with projection in SD3, as its text_encoder), OpenCLIP bigG (SDXL's text_encoder_2), T5 v1.1 XXL encoder.
T5_XXL, CLIP_L, CLIP_L_PROJ, CLIP_G, VAE16 = 4_762_310_656, 123_060_480, 123_650_304, 694_659_840, 83_819_683
FLOW_RELEASES = {
    "flux-dev": {"transformer": 11_901_408_320, "vae": VAE16, "text_encoder": CLIP_L, "text_encoder_2": T5_XXL},
    "flux-schnell": {"transformer": 11_891_178_560, "vae": VAE16, "text_encoder": CLIP_L, "text_encoder_2": T5_XXL},
    "sd35m": {"transformer": 2_243_171_520, "vae": VAE16, "text_encoder": CLIP_L_PROJ, "text_encoder_2": CLIP_G,
              "text_encoder_3": T5_XXL},
    "sd35l": {"transformer": 8_056_627_520, "vae": VAE16, "text_encoder": CLIP_L_PROJ, "text_encoder_2": CLIP_G,
              "text_encoder_3": T5_XXL},
}


def _realsize():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import realsize
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return realsize


@pytest.mark.parametrize("name", sorted(FLOW_RELEASES))
def test_real_size_flow_transformers_match_the_released_checkpoints(name):
    """bench/realsize.py's SD3.5 / FLUX.1 pipelines hold the released parameter counts, component by component."""
    pipe = _realsize().build_pipeline(name, device="meta", dtype="float32")
    counts = {part: sum(p.numel() for p in getattr(pipe, part).parameters()) for part in FLOW_RELEASES[name]}
    assert counts == FLOW_RELEASES[name]
    assert type(pipe).__name__ == ("FluxPipeline" if name.startswith("flux") else "StableDiffusion3Pipeline")


def test_sd3_medium_architecture_matches_its_release():
    """The MMDiT the SD3.5 configs build on: SD3-medium's config gives its released 2,028,328,000 parameters."""
    import torch
    from diffusers import SD3Transformer2DModel

    cfg = {**_realsize().SD35_MEDIUM, "pos_embed_max_size": 192, "dual_attention_layers": (), "qk_norm": None}
    with torch.device("meta"):
        assert sum(p.numel() for p in SD3Transformer2DModel(**cfg).parameters()) == 2_028_328_000


# The 2026 families' parts on the meta device, as bench/realsize.py builds them (the same release configs as
# tests/test_flux2.py, test_qwen_image.py, test_z_image.py count): the transformers, the VAEs (FLUX.2's
# AutoencoderKLFlux2 defaults: 32 latent channels; Qwen-Image's; Z-Image's is FLUX.1's) and the text encoders as the
# pipelines load them (Qwen3-4B with its tied LM head for [klein], without it for Z-Image: the same count; Qwen-Image's
# whole Qwen2.5-VL-7B). README "Memory at real size" computes from these.
QWEN3_4B = 4_022_468_096
FAMILY_RELEASES = {
    "flux2-dev": {"transformer": 32_223_281_152, "vae": 84_046_115},
    "flux2-klein-4b": {"transformer": 3_875_544_576, "vae": 84_046_115, "text_encoder": QWEN3_4B},
    "qwen-image": {"transformer": 20_430_401_088, "vae": 126_892_531, "text_encoder": 8_292_166_656},
    "z-image": {"transformer": 6_154_908_736, "vae": VAE16, "text_encoder": QWEN3_4B},
}


@pytest.mark.parametrize("name", sorted(FAMILY_RELEASES))
def test_real_size_2026_families_hold_the_released_parameter_counts(name):
    parts = _realsize().family_parts(name, device="meta")
    assert {part: sum(p.numel() for p in m.parameters()) for part, m in parts.items()} == FAMILY_RELEASES[name]
    assert type(parts["transformer"]).__name__ == _realsize().FAMILY_TRANSFORMERS[name][1]


def test_gpu_sh_train_steps_name_families_bench_train_builds():
    """Every `--family` bench/gpu.sh passes to bench/train.py is one it builds (a misspelt one would only fail on
    the GPU host, costing that step)."""
    import re

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import train
    finally:
        sys.path.remove(str(ROOT / "bench"))
    script = (ROOT / "bench" / "gpu.sh").read_text()
    named = set(re.findall(r"--family ([\w-]+)", script))
    assert {"flux2-dev", "qwen-image", "z-image"} <= named
    saved = sys.argv
    try:
        for family in named:
            sys.argv = ["train.py", "--family", family, "--lora-rank", "16", "--base-quantization", "nf4"]
            assert train.parse_args().family == family
    finally:
        sys.argv = saved
