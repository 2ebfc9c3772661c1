"""The toy world: synthetic captioned images, a deterministic build, and a pretrained model that is an ordinary
StableDiffusionPipeline whose captions steer what it draws."""

import hashlib

import pytest
import torch
from PIL import Image

from aifeedback.zoo import toy, toy_world


def test_synthetic_images_match_their_captions():
    x, captions = toy.synthetic_batch(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 3, toy_world.SIZE, toy_world.SIZE) and x.min() >= -1 and x.max() <= 1
    x2, captions2 = toy.synthetic_batch(64, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and captions == captions2
    for img, cap in zip(x, captions):
        words = cap.split()
        disc, bg = words[1], words[5]
        assert cap == toy_world.caption(disc, bg) and disc != bg
        corners = torch.stack([img[:, 0, 0], img[:, 0, -1], img[:, -1, 0], img[:, -1, -1]])
        named = torch.tensor(toy_world.COLORS[bg]) * 2 - 1
        # a disc of radius <= 3 px centred inside the image never covers more than one corner fully
        assert (corners - named).abs().max(dim=1).values.sort().values[2] < 0.45
    # the fidelity measure reads every training image's colours right, and pretraining never shows a held-out caption
    assert all(toy.faithful(((x + 1) / 2).permute(0, 2, 3, 1).numpy(), captions))
    assert not set(captions) & set(toy_world.held_out_captions())


def test_held_out_captions_still_show_every_colour_in_both_roles():
    held = toy_world.held_out_captions()
    assert len(held) == 24 and set(held) < set(toy_world.all_captions())
    seen = [toy_world.caption(*(list(toy_world.COLORS)[i] for i in pair)) for pair in toy_world.pretraining_pairs()]
    assert len(seen) == 108 and not set(seen) & set(held)
    assert (
        {toy_world.parse_caption(c)[0] for c in seen}
        == {toy_world.parse_caption(c)[1] for c in seen}
        == set(toy_world.COLORS)
    )


def test_toy_fidelity_scorer_checks_both_colours():
    from aifeedback.errors import AifError
    from aifeedback.scoring.scorers import load_scorer

    x, captions = toy.synthetic_batch(8, torch.Generator().manual_seed(2))
    images = [Image.fromarray((((im + 1) * 127.5).round()).byte().permute(1, 2, 0).numpy()) for im in x]
    scorer = load_scorer("toy-fidelity")
    assert scorer.score(images, captions) == [1.0] * 8
    disc, bg = toy_world.parse_caption(captions[0])
    other = next(c for c in toy_world.COLORS if c not in (disc, bg))
    # swapped, wrong disc, wrong bg
    wrong = [toy_world.caption(bg, disc), toy_world.caption(other, bg), toy_world.caption(disc, other)]
    assert scorer.score([images[0]] * 3, wrong) == [0.0] * 3
    with pytest.raises(AifError, match="toy captions only"):
        scorer.score(images[:1], ["a photo of a cat"])


def test_prompt_split_is_disjoint_and_seeded():
    a = toy_world.toy_prompts(100, seed=3)
    assert len(set(a)) == 100 and a == toy_world.toy_prompts(100, seed=3) and a != toy_world.toy_prompts(100, seed=4)
    with pytest.raises(ValueError, match="132 distinct captions"):
        toy_world.toy_prompts(133)


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


def test_toy_model_draws_what_held_out_captions_say(toy_sd15):
    # Caption combinations pretraining never showed: the model must compose "disc colour" and "background colour".
    # 92% measured on the build this was tuned on; 80% leaves room for the model another CPU type trains.
    from aifeedback.families.loading import load_pipeline

    pipe = load_pipeline("toy-sd15")
    pipe.set_progress_bar_config(disable=True)
    assert toy.prompt_fidelity(pipe, toy_world.held_out_captions(), seeds=4) >= 0.8


def test_toy_model_cache_is_versioned_on_its_own(toy_sd15):
    # A toy model cached by an older build (other world, other training) must be rebuilt, not reused.
    from aifeedback.zoo import ZOO
    from aifeedback.zoo.cache import ZOO_VERSION

    assert toy_sd15.name == f"toy-sd15-v{ZOO['toy-sd15'].version}" != f"toy-sd15-v{ZOO_VERSION}"
