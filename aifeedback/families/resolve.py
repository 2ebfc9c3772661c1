"""What a model argument names, and whether it can be loaded, checked without importing torch or diffusers.

A model is a tiny/toy name (built offline), a local diffusers folder or a hub id; tuned weights (`--tuned`) are a
LoRA file or folder, a denoiser (UNet or transformer) or pipeline folder, a training run or checkpoint, or a hub repo
with `unet/` or `transformer/`. Every
stage checks its model arguments here first, so a misspelt name fails in a second with the fix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aifeedback.errors import AifError, first_line
from aifeedback.storage.checkpoints import DENOISER_DIRS, LORA_FILE, CheckpointError, denoiser_dir, latest_checkpoint
from aifeedback.zoo import ZOO

# Real models users commonly pass; listed by `aif models` (any other hub id or local path works too).
KNOWN_MODELS: dict[str, str] = {
    "stabilityai/stable-diffusion-xl-base-1.0": "SDXL base 1.0 (the paper's DPO-SDXL starting point), 1024 px",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "Stable Diffusion 1.5 (the paper's DPO-SD1.5 starting point), 512 "
                                                   "px",
    "mhdang/dpo-sdxl-text2image-v1": "the paper's released DPO-SDXL UNet (use as --tuned in eval)",
    "madebyollin/sdxl-vae-fp16-fix": "SDXL VAE that does not overflow in fp16 (pass as --vae)",
    "stabilityai/sdxl-turbo": "SDXL Turbo (sdxl family, distilled): 1 step, no guidance, 512 px by default",
    "stabilityai/stable-diffusion-xl-refiner-1.0": "SDXL refiner (sdxl-refiner family): second text encoder only, "
                                                   "aesthetic-score conditioning, 1024 px",
    "stabilityai/stable-diffusion-3-medium-diffusers": "SD3 medium (2B MMDiT, flow matching; gated: accept the "
                                                       "licence on the hub), 1024 px",
    "stabilityai/stable-diffusion-3.5-medium": "SD3.5 medium (2.5B MMDiT-X, flow matching; gated), 1024 px",
    "stabilityai/stable-diffusion-3.5-large": "SD3.5 large (8B MMDiT, flow matching; gated), 1024 px",
    "black-forest-labs/FLUX.1-dev": "FLUX.1 dev (12B transformer, guidance-distilled, flow matching; gated, "
                                    "non-commercial licence), 1024 px",
    "black-forest-labs/FLUX.1-schnell": "FLUX.1 schnell (12B transformer, timestep-distilled: 1-4 steps, no "
                                        "guidance; Apache-2.0, gated), 1024 px",
    "Tongyi-MAI/Z-Image": "Z-Image (6B single-stream transformer, Qwen3-4B text encoder, flow matching; Apache-2.0), "
                          "1024 px",
    "Tongyi-MAI/Z-Image-Turbo": "Z-Image-Turbo (Z-Image distilled: 8 steps, no guidance; Apache-2.0), 1024 px",
    "Qwen/Qwen-Image": "Qwen-Image (20B dual-stream transformer, Qwen2.5-VL-7B text encoder, flow matching, true CFG; "
                       "Apache-2.0), 1024 px",
    "black-forest-labs/FLUX.2-dev": "FLUX.2 [dev] (32B transformer, Mistral Small 3 text encoder, guidance-distilled; "
                                    "gated, non-commercial licence), 1024 px",
    "black-forest-labs/FLUX.2-klein-base-4B": "FLUX.2 [klein] base 4B (undistilled, classifier-free guidance; Qwen3-4B "
                                              "text encoder; Apache-2.0), 1024 px: the one to fine-tune",
    "black-forest-labs/FLUX.2-klein-base-9B": "FLUX.2 [klein] base 9B (undistilled; Qwen3-8B text encoder; "
                                              "non-commercial licence), 1024 px",
    "black-forest-labs/FLUX.2-klein-4B": "FLUX.2 [klein] 4B (step-distilled: 4 steps, no guidance; Apache-2.0), "
                                         "1024 px",
    "black-forest-labs/FLUX.2-klein-9B": "FLUX.2 [klein] 9B (step-distilled: 4 steps, no guidance; non-commercial "
                                         "licence), 1024 px",
}


@dataclass(frozen=True)
class ModelDefaults:
    """Settings a model needs that differ from its family's defaults; None keeps the family's (families/base.py).

    steps and guidance are what generate, sample, eval and training's validation images use when no flag sets
    them; resolution is training's default size (sampling uses the model's native size from its UNet config)."""

    steps: int | None = None
    guidance: float | None = None
    resolution: int | None = None


# Per-model defaults, by hub id (a zoo model shares a real model's through ZooModel.like). SDXL Turbo is
# adversarially distilled to sample in 1-4 steps without classifier-free guidance at 512 px: its model card and the
# diffusers docs sample it with num_inference_steps=1, guidance_scale=0.0. Its sampler (EulerAncestral, "trailing"
# timesteps) is in its own scheduler config, which `--scheduler default` keeps.
MODEL_DEFAULTS: dict[str, ModelDefaults] = {
    "stabilityai/sdxl-turbo": ModelDefaults(steps=1, guidance=0.0, resolution=512),
    # timestep-distilled: its model card samples 4 steps without guidance (max_sequence_length 256)
    "black-forest-labs/FLUX.1-schnell": ModelDefaults(steps=4, guidance=0.0),
    # distilled to 8 function evaluations without guidance: diffusers' Z-Image docs sample it with
    # num_inference_steps=8, guidance_scale=0.0
    "Tongyi-MAI/Z-Image-Turbo": ModelDefaults(steps=8, guidance=0.0),
    # step-distilled (Flux2KleinPipeline's is_distilled: guidance is ignored): sampled in 4 steps at guidance 1.0 (the
    # defaults of the MLX and C runners of these checkpoints; BFL's model cards could not be read here)
    "black-forest-labs/FLUX.2-klein-4B": ModelDefaults(steps=4, guidance=1.0),
    "black-forest-labs/FLUX.2-klein-9B": ModelDefaults(steps=4, guidance=1.0),
}


def model_defaults(name: str) -> ModelDefaults:
    """The defaults of a model argument: a hub id, a zoo name (its `like`), or a Hugging Face cache snapshot folder
    (.../models--OWNER--NAME/snapshots/REV, the path `hf download` prints); any other model has its family's."""
    if name in ZOO and ZOO[name].like:
        name = ZOO[name].like
    parts = Path(name).expanduser().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        name = parts[-3].removeprefix("models--").replace("--", "/", 1)
    return MODEL_DEFAULTS.get(name, ModelDefaults())


DTYPES = ("float32", "float16", "bfloat16")


SCHEDULERS = ("default", "ddim", "ddpm", "euler", "euler_a", "dpmpp_2m", "pndm", "lms")


class ModelLoadError(AifError):
    """A model name that is neither a local folder, a cached hub model, nor reachable on the hub."""


def tiny_names() -> dict[str, str]:
    """Offline model names -> description (tiny zoo and toy world)."""
    return ZOO.describe()


def resolve_model(name: str) -> str:
    """A tiny/toy name -> its built folder; anything else is returned unchanged (hub id or path)."""
    if name in ZOO:
        return str(ZOO[name].path())
    return name


def load_error(name: str, what: str, err: Exception) -> ModelLoadError:
    hint = ", ".join(tiny_names())
    local = Path(name).exists()
    where = ("is a local folder but could not be loaded" if local else
             "is not a local folder, not in the Hugging Face cache, and the hub could not be reached "
             "(or has no such repo)")
    return ModelLoadError(
        f"Could not load {what} '{name}': it {where}.\n"
        f"  Fix: check the spelling, download it on a machine with network access (`hf download {name}`) "
        f"and set HF_HOME to that cache, or pass a local folder; for an offline test use one of: {hint}.\n"
        f"  Details: {first_line(err)}"
    )


def check_available(name: str, what: str = "model") -> None:
    """Fail within a second, before torch and diffusers are imported, when `name` cannot be loaded.

    A tiny name or an existing local path passes; a hub id passes when it is in the Hugging Face cache or, when
    online, when the hub knows it. Anything else raises ModelLoadError naming the model and the fix.
    """
    if name in tiny_names() or Path(name).expanduser().exists():
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"Could not load {what} '{name}': no such local folder.\n"
                             f"  Fix: check the path, or pass a hub id such as {next(iter(KNOWN_MODELS))}.")
    from huggingface_hub import constants, model_info, try_to_load_from_cache

    for file in ("model_index.json", "config.json", *(f"{d}/config.json" for d in DENOISER_DIRS)):
        if isinstance(try_to_load_from_cache(name, file), str):
            return
    if constants.HF_HUB_OFFLINE:
        raise load_error(name, what, RuntimeError("HF_HUB_OFFLINE is set and the model is not in the cache"))
    try:
        model_info(name, timeout=10)
    except Exception as e:  # not found, gated, or no network (httpx / requests errors): all mean "cannot load"
        raise load_error(name, what, e) from None


def check_pipeline(name: str, vae: str | None = None, tuned: str | None = None) -> tuple[str | None, str | None]:
    """Fail fast (no torch import) unless the model, VAE and tuned weights can be found; returns resolve_tuned's
    (kind, where) for `tuned`, or (None, None)."""
    check_available(name)
    if vae:
        check_available(vae, "VAE")
        check_vae_class(name, vae)
    if not tuned:
        return None, None
    kind, where = check_tuned(tuned)
    check_trained_for(name, where, f"--tuned {tuned}")
    return kind, where


class TunedLoadError(ModelLoadError):
    """A --tuned path that holds no LoRA, denoiser or checkpoint."""


def is_pipeline(name: str) -> bool:
    """Whether `name` is a whole text-to-image model (a tiny name, a folder with model_index.json, or a hub repo with
    one) rather than weights for a base model (LoRA, denoiser folder, checkpoint, run dir, hub repo with only unet/
    or transformer/)."""
    if name in tiny_names():
        return True
    path = Path(name).expanduser()
    if path.exists():
        return (path / "model_index.json").is_file()
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return False
    from huggingface_hub import constants, file_exists, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "model_index.json"), str):
        return True
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        return file_exists(name, "model_index.json")
    except Exception:  # unreachable hub or gated repo: loading it as tuned weights reports the problem plainly
        return False


def resolve_tuned(tuned: str) -> tuple[str, str]:
    """('lora' | 'unet', where) for a --tuned value; `where` is a file, a denoiser folder, or a hub id. The kind
    'unet' stands for any denoiser weights (a UNet or a transformer), named by the component they replace.

    A tiny name -> its denoiser. Local paths: a LoRA `.safetensors` file, a folder holding
    `pytorch_lora_weights.safetensors`, a folder with `unet/config.json` or `transformer/config.json`, a denoiser
    folder itself, or a training run (has `checkpoints/`) -> its latest checkpoint.
    Anything else is a hub id of a repo with a `unet/` or `transformer/` folder (e.g. mhdang/dpo-sdxl-text2image-v1).
    """
    if tuned in tiny_names():  # a whole tiny pipeline: its denoiser
        return "unet", str(denoiser_dir(resolve_model(tuned)))
    p = Path(tuned).expanduser()
    if not p.exists():
        if tuned.startswith((".", "/", "~")) or p.suffix == ".safetensors":
            raise TunedLoadError(f"--tuned {tuned} does not exist. Fix: check the path (a LoRA file, a denoiser or "
                                 f"pipeline folder, or a training run directory).")
        return "unet", tuned
    if (p / "checkpoints").is_dir():
        try:
            p = latest_checkpoint(p)
        except CheckpointError as e:
            raise TunedLoadError(f"--tuned {e}") from None
    if p.is_file():
        if p.suffix != ".safetensors":
            raise TunedLoadError(f"--tuned {p}: a file must be a LoRA .safetensors file.")
        return "lora", str(p)
    if (p / LORA_FILE).is_file():
        return "lora", str(p / LORA_FILE)
    if denoiser_dir(p) is not None:
        return "unet", str(denoiser_dir(p))
    if (p / "config.json").is_file():
        return "unet", str(p)
    raise TunedLoadError(
        f"--tuned {p} holds neither {LORA_FILE}, unet/config.json, transformer/config.json, config.json nor "
        "checkpoints/. Fix: pass a LoRA file, a denoiser or pipeline folder, a training checkpoint or run directory."
    )


def tuned_fingerprint(tuned: str | None) -> str | None:
    """A fingerprint of the local weights a --tuned value names (name, size and modification time of each file), so a
    job that records it sees retrained weights at the same path (a run retrained with --overwrite keeps its
    checkpoint names); None without local weights (no --tuned, a tiny name, a hub id)."""
    if not tuned or tuned in tiny_names():
        return None
    where = Path(resolve_tuned(tuned)[1])
    if not where.exists():
        return None
    files = [where] if where.is_file() else sorted(p for p in where.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(where.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:16]


def check_tuned(tuned: str) -> tuple[str, str]:
    """resolve_tuned, plus (for a hub denoiser) the quick check that it can be loaded, before diffusers is imported."""
    kind, where = resolve_tuned(tuned)
    if kind == "unet" and not Path(where).exists():
        check_available(where, "tuned denoiser")
    return kind, where


# Denoiser config fields that weights trained for one model need in the model they are applied to.
FIT_KEYS = {
    "unet": ("cross_attention_dim", "addition_embed_type", "block_out_channels", "in_channels"),
    "transformer": ("in_channels", "num_layers", "num_attention_heads", "attention_head_dim", "joint_attention_dim",
                    "pooled_projection_dim", "patch_size", "dim", "n_layers", "n_heads", "cap_feat_dim",  # Z-Image's
                    "num_single_layers"),  # FLUX.1's and FLUX.2's
}


def recorded_model(where: str | Path) -> str | None:
    """The base model that weights at `where` (a LoRA file, a denoiser folder, a checkpoint or run folder, an
    export) were trained on, as the training run's config.yaml or the export's model card records it; None when no
    record says (weights made elsewhere, a hub id)."""
    import yaml

    p = Path(where).expanduser()
    if not p.exists():
        return None
    for folder in [p, *p.parents][:5]:
        try:
            if (folder / "checkpoints").is_dir() and (folder / "config.yaml").is_file():
                model = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("model")
            elif (folder / "README.md").is_file() and ((folder / LORA_FILE).is_file() or denoiser_dir(folder)):
                from aifeedback.sharing.cards import front_matter

                model = front_matter((folder / "README.md").read_text()).get("base_model")
            else:
                continue
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            return None
        return model if isinstance(model, str) and model != "BASE_MODEL" else None
    return None


def read_model_file(name: str, file: str) -> dict | None:
    """A JSON config file of a model (tiny name, local folder, or a hub id in the cache), without loading it; None
    when it cannot be read here."""
    import json

    local = Path(resolve_model(name)).expanduser()
    if local.is_dir():
        path = local / file
        return json.loads(path.read_text()) if path.is_file() else None
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, file)
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def vae_class_error(vae: str, found: str, name: str, expected: str) -> ModelLoadError:
    return ModelLoadError(f"--vae {vae} is of class {found}, but {name} decodes with class {expected}: a VAE of "
                          f"another class has other latents. Fix: pass a {expected} (e.g. the vae/ folder of a model "
                          f"of the same family), or drop --vae.")


def check_vae_class(name: str, vae: str) -> None:
    """Preflight: a --vae of another class than the model's own VAE (read from their config files where they can
    be read here) is refused before anything loads."""
    try:
        index, config = read_model_file(name, "model_index.json"), read_model_file(vae, "config.json")
    except (OSError, ValueError):
        return
    expected = (index or {}).get("vae", [None, None])[1]
    found = (config or {}).get("_class_name")
    if expected and found and found != expected:
        raise vae_class_error(vae, found, name, expected)


def architecture(name: str) -> tuple[str, str, dict] | None:
    """(pipeline class, denoiser component, its FIT_KEYS values) of a model, read from its config files without
    loading it; None when they cannot be read here (a hub model not in the cache)."""
    try:
        index = read_model_file(name, "model_index.json")
        for component in DENOISER_DIRS:
            config = read_model_file(name, f"{component}/config.json") if index and component in index else None
            if config is not None:
                fit = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()
                       if k in FIT_KEYS.get(component, ())}
                return index.get("_class_name", "?"), component, fit
    except (OSError, ValueError):
        return None
    return None


def check_trained_for(base: str, where: str | Path, what: str) -> None:
    """Refuse weights at `where` whose training run (or export) records a base model of another architecture than
    `base` (another pipeline class or denoiser shape): applying them would give a model nobody trained."""
    trained = recorded_model(where)
    if trained is None or trained == base:
        return
    theirs, ours = architecture(trained), architecture(base)
    if theirs is None or ours is None or theirs == ours:
        return
    if theirs[:2] != ours[:2]:
        differs = f"it is a {theirs[0]} ({theirs[1]}), the base is a {ours[0]} ({ours[1]})"
    else:
        key = next(k for k in theirs[2] if theirs[2].get(k) != ours[2].get(k))
        differs = f"its {theirs[1]} {key} is {theirs[2].get(key)}, the base's is {ours[2].get(key)}"
    raise TunedLoadError(f"{what} was trained for model {trained}, not for base model {base}: {differs}. Fix: pass "
                         f"--model {trained} (the model it was trained on), or weights trained for {base}.")
