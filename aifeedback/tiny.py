"""The offline tiny-model zoo: small random-initialised diffusers pipelines with the real architectures.

No weights can be downloaded in tests or CI, so `tiny-sdxl` and `tiny-sd15` are built here from a fixed seed
(same bytes on every machine), saved once under the cache directory, and then loaded with `from_pretrained`
like any hub model. Their tokenizers are the real CLIP BPE tokenizer, built from the vocab file that open_clip
ships, so prompts tokenise exactly as with the real models.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from aifeedback.io import publish_modes

# Bump when a builder changes, so stale caches are rebuilt instead of silently reused.
ZOO_VERSION = "1"


def cache_dir() -> Path:
    """Root of aifeedback's cache: $AIF_CACHE, else $XDG_CACHE_HOME/aifeedback, else ~/.cache/aifeedback."""
    if os.environ.get("AIF_CACHE"):
        return Path(os.environ["AIF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aifeedback"


def cached_build(name: str, build: Callable[[Path], None]) -> Path:
    """Build a model folder once into the cache (under a lock, atomically) and return its path."""
    from filelock import FileLock

    root = cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-v{ZOO_VERSION}"
    if (final / ".complete").exists():
        return final
    with FileLock(str(root / f".{name}.lock")):
        if (final / ".complete").exists():  # another process built it while we waited
            return final
        tmp = root / f".{name}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        _build_outside_process_group(build, tmp)
        (tmp / ".complete").write_text("ok\n")
        publish_modes(tmp)  # the shared cache is read by other users' runs
        os.replace(tmp, final)
    return final


def _build_outside_process_group(build: Callable[[Path], None], out: Path) -> None:
    """Run build(out) here, or in a fresh process when this one is in a torch.distributed group.

    transformers' save_pretrained writes nothing on a non-zero rank of an initialised process group, so a model
    built there (whichever process of `accelerate launch` wins the lock builds) would be saved without its weights.
    """
    import multiprocessing
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        build(out)
        return
    proc = multiprocessing.get_context("spawn").Process(target=build, args=(out,))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"building {out.name} in a subprocess failed (exit code {proc.exitcode}); see its output above")


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer

def clip_tokenizer_files(out: Path) -> Path:
    """Write vocab.json + merges.txt of the CLIP BPE tokenizer from open_clip's bundled vocab into `out`."""
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]  # same slice as CLIP's own tokenizer
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return out


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte->printable-character table: every byte gets a visible unicode char, so BPE never sees
    # whitespace or control bytes.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The real CLIP tokenizer (49408 tokens, max length 77), built offline."""
    from transformers import CLIPTokenizer

    d = cached_build("clip-tokenizer", clip_tokenizer_files)
    return CLIPTokenizer.from_pretrained(str(d), pad_token=pad_token, model_max_length=77)


# ---------------------------------------------------------------------------------------------------------------
# Pipelines

VOCAB_SIZE = 49408
BOS, EOS = 49406, 49407


def _text_config(hidden: int, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1, hidden_size=hidden,
        intermediate_size=2 * hidden, num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=77,
        projection_dim=projection, hidden_act="gelu",
    )


def _vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    # Two blocks = one 2x downsample (the real VAE has four blocks, 8x); same class and code path.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=32, scaling_factor=scaling_factor,
    )


def build_tiny_sdxl(out: Path) -> None:
    """A StableDiffusionXLPipeline with two text encoders and text_time conditioning, ~1M UNet parameters."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    te1 = CLIPTextModel(_text_config(hidden=16, projection=16))
    torch.manual_seed(1)
    te2 = CLIPTextModelWithProjection(_text_config(hidden=16, projection=16))
    time_dim = 8
    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 1), use_linear_projection=True,
        cross_attention_dim=32,  # te1 hidden + te2 hidden, concatenated as in SDXL
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + 16,  # six time ids + pooled te2 projection
        norm_num_groups=8,
    )
    torch.manual_seed(3)
    vae = _vae(0.13025)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=clip_tokenizer("<|endoftext|>"),
        tokenizer_2=clip_tokenizer("!"), unet=unet, scheduler=scheduler,
    )
    pipe.save_pretrained(out)


def build_tiny_sd15(out: Path) -> None:
    """A StableDiffusionPipeline with one text encoder, ~1M UNet parameters, no safety checker."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    te = CLIPTextModel(_text_config(hidden=32, projection=32))
    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4, cross_attention_dim=32, norm_num_groups=8,
    )
    torch.manual_seed(3)
    vae = _vae(0.18215)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
        set_alpha_to_one=False, prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out)


def _build_toy_sd15(out: Path) -> None:
    from aifeedback.toy import build_toy_sd15  # the toy world lives in its own module (it trains, ~1.5 min)

    build_toy_sd15(out)


# name -> (builder, one-line description). Other modules (toy world, tiny scorers) add their own entries.
TINY_PIPELINES: dict[str, tuple[Callable[[Path], None], str]] = {
    "tiny-sdxl": (build_tiny_sdxl, "tiny random StableDiffusionXLPipeline (2 text encoders, text_time), for tests"),
    "tiny-sd15": (build_tiny_sd15, "tiny random StableDiffusionPipeline, for tests"),
    "toy-sd15": (_build_toy_sd15, "toy StableDiffusionPipeline pretrained on coloured discs (8x8 px) for `aif demo`"),
}


def tiny_pipeline_path(name: str) -> Path:
    """Folder of a tiny pipeline, built on first use."""
    build, _ = TINY_PIPELINES[name]
    return cached_build(name, build)
