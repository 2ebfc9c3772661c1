"""The toy world: synthetic captioned images, a deterministic build, and a pretrained model that is an ordinary
StableDiffusionPipeline whose captions steer what it draws."""

import hashlib

import pytest
import torch

from aifeedback.zoo import toy


def test_synthetic_images_match_their_captions():
    x, captions = toy.synthetic_batch(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 3, toy.SIZE, toy.SIZE) and x.min() >= -1 and x.max() <= 1
    x2, captions2 = toy.synthetic_batch(64, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and captions == captions2
    for img, cap in zip(x, captions):
        words = cap.split()
        disc, bg = words[1], words[5]
        assert cap == toy.caption(disc, bg) and disc != bg
        corners = torch.stack([img[:, 0, 0], img[:, 0, -1], img[:, -1, 0], img[:, -1, -1]])
        named = torch.tensor(toy.COLORS[bg]) * 2 - 1
        # a disc of radius <= 3 px centred inside the image never covers more than one corner fully
        assert (corners - named).abs().max(dim=1).values.sort().values[2] < 0.45


def test_prompt_split_is_disjoint_and_seeded():
    a = toy.toy_prompts(100, seed=3)
    assert len(set(a)) == 100 and a == toy.toy_prompts(100, seed=3) and a != toy.toy_prompts(100, seed=4)
    with pytest.raises(ValueError, match="132 distinct captions"):
        toy.toy_prompts(133)


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.safetensors"))}


def test_build_is_deterministic(tmp_path):
    # The real build is the same code with more steps; two short builds must give byte-identical weights.
    toy.build_toy_sd15(tmp_path / "a", steps=2, vae_steps=2)
    toy.build_toy_sd15(tmp_path / "b", steps=2, vae_steps=2)
    da, db = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert set(da) == {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"}
    assert da == db
    toy.build_toy_sd15(tmp_path / "c", steps=2, vae_steps=2, seed=1)
    assert _digest(tmp_path / "c") != da


def test_toy_model_is_an_sd15_pipeline_whose_captions_steer_it(toy_sd15):
    from diffusers import StableDiffusionPipeline

    from aifeedback.families.loading import family, load_pipeline

    pipe = load_pipeline("toy-sd15")
    assert isinstance(pipe, StableDiffusionPipeline) and family(pipe) == "sd15"
    assert pipe.scheduler.config.prediction_type == "v_prediction"

    # The VAE is near-identity: the latent is the image, and decoding gives it back.
    x, _ = toy.synthetic_batch(64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        dist = pipe.vae.encode(x).latent_dist
        recon = pipe.vae.decode(dist.sample()).sample
    assert torch.allclose(dist.sample(), dist.mean, atol=1e-5)
    assert ((dist.mean - x) ** 2).mean() < 0.02 and ((recon - x) ** 2).mean() < 0.03

    # Captions condition the model: the background it draws is the one the caption names.
    def border_rgb(prompt):
        out = pipe([prompt] * 16, num_inference_steps=10, guidance_scale=1.0, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
        return torch.tensor(out[:, [0, -1]].reshape(16, -1, 3).mean(1).mean(0))

    red_bg = border_rgb("a yellow disc on a red background")
    blue_bg = border_rgb("a yellow disc on a blue background")
    assert red_bg[0] - red_bg[2] > 0.2 and blue_bg[2] - blue_bg[0] > 0.2
