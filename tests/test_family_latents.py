"""`aif generate --save-latents` stores each family's training-space latents, and `aif train` uses them instead of
encoding the images again: FLUX.2's are 2x2-patchified (4x the VAE's channels at half the side), Qwen-Image's have
its video VAE's z_dim channels."""

import pytest

from tests.golden import aif
from tests.pairs_fixtures import tiny_train


@pytest.mark.parametrize("model, shape", [("tiny-flux2", "[32, 8, 8]"), ("tiny-qwen-image", "[16, 16, 16]"),
                                          ("tiny-z-image", "[16, 16, 16]")])
def test_training_uses_the_stored_latents_of_each_family(tmp_path, capsys, aif_cache, model, shape):
    from aifeedback.stages.train import run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na blue car\n")
    gen, pairs = tmp_path / "gen", tmp_path / "pairs"
    aif("generate", "--model", model, "--prompts", str(prompts), "--images-per-prompt", "3", "--steps", "2",
        "--resolution", "32", "--save-latents", "--out", str(gen), "--no-progress")
    aif("score", "--input", str(gen), "--out", str(pairs), "--scorer", "redness", "--workers", "0", "--no-progress")
    capsys.readouterr()
    run(tiny_train(pairs, tmp_path / "run", data="ai", model=model, lora_rank=2, max_steps=1, checkpoint_every=1,
                   resolution=32))
    assert f"using the stored latents {shape} (VAE encoder skipped)" in capsys.readouterr().err
