"""HPSv3: its image preparation, prompt, forward and formula (written out here from the upstream package hpsv3 1.0.0,
independently of the project's code), on a tiny random Qwen2-VL with the reward head; the real architecture; the
checkpoint layout and what a checkpoint file may be."""

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from aifeedback.errors import AifError
from aifeedback.preflight import check_scorers
from aifeedback.scoring.scorers import UnknownScorerError, list_scorers, load_scorer
from tests.test_vlm import MODES, SIZES, noise_image

PIXELS = 200704  # HPSv3_7B.yaml: min_pixels = max_pixels = 256 * 28 * 28


# ---------------------------------------------------------------------------------------------------------------
# hpsv3/dataset/utils.py (its copy of qwen_vl_utils): smart_resize and fetch_image on a PIL image

def upstream_smart_resize(height, width, factor=28, min_pixels=PIXELS, max_pixels=PIXELS):
    assert max(height, width) / min(height, width) <= 200
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def upstream_fetch_image(image):
    image = image.convert("RGB")
    width, height = image.size
    h, w = upstream_smart_resize(height, width)
    return image.resize((w, h), Image.BICUBIC)


@pytest.fixture(scope="module")
def hps():
    return load_scorer("hpsv3:tiny")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("w,h", SIZES)
def test_image_preparation_is_hpsv3_fetch_image(hps, w, h, mode):
    image = noise_image(w, h, mode=mode)
    ours, ref = hps.transform(image), upstream_fetch_image(image)
    assert ours.mode == "RGB" and ours.size == ref.size
    assert np.array_equal(np.array(ours), np.array(ref))
    assert ours.size[0] % 28 == 0 and ours.size[1] % 28 == 0
    assert abs(ours.size[0] * ours.size[1] - PIXELS) <= 28 * max(ours.size)  # about 448 x 448


def test_rgba_alpha_is_dropped_not_composited(hps):
    image = Image.new("RGBA", (448, 448), (10, 20, 30, 0))  # fully transparent; qwen_vl_utils now makes it white
    assert np.array(hps.transform(image)).max() == 30


# ---------------------------------------------------------------------------------------------------------------
# The prompt: INSTRUCTION.format(text_prompt=...) + prompt_with_special_token, in the processor's chat template

def test_prompt_is_upstreams(hps):
    from aifeedback.scoring.scorers.hpsv3 import INSTRUCTION, SUFFIX

    assert INSTRUCTION.startswith("\nYou are tasked with evaluating a generated image based on Visual Quality and Text "
                                  "Alignment and give a overall score")
    assert "being the best. \n\n**Visual Quality:**  \nEvaluate" in INSTRUCTION
    assert "lowest possible. \n\n**Text Alignment:**  \nAssess" in INSTRUCTION
    assert INSTRUCTION.endswith("the original description.\nTextual prompt - {text_prompt}\n\n\n")
    assert len(INSTRUCTION) == 2523
    assert SUFFIX == "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
    batch = hps.inputs([hps.transform(noise_image(64, 64))], ["a red {cat}"])
    ids = batch["input_ids"][0]
    tok = hps.processor.tokenizer
    assert hps.reward_id == len(tok) - 1  # added after the base vocabulary, as upstream
    assert int((ids == hps.reward_id).sum()) == 1
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|>")
    assert text.count("<|image_pad|>") == 16 * 16  # 448 x 448: 32 x 32 patches, merged 2 x 2
    assert text.endswith("<|vision_end|>" + INSTRUCTION.format(text_prompt="a red {cat}") + SUFFIX
                         + "<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------------------------
# The forward: Qwen2VLRewardModelBT.forward as upstream writes it, then rewards[:, 0]

def upstream_reward(s, image, prompt, positions="sequential"):
    """inference.py prepare_batch (one image) and qwen2vl_trainer.py's forward: embeddings, the vision tower's output
    scattered into the image tokens, the language model WITHOUT position ids (so 0..L-1), the float32 head at the
    <|Reward|> token; "mrope": the image's 2-D rotary positions instead (what upstream does not do)."""
    from aifeedback.scoring.scorers.hpsv3 import INSTRUCTION, SUFFIX  # the text, checked in test_prompt_is_upstreams

    content = [{"type": "image", "image": image, "min_pixels": PIXELS, "max_pixels": PIXELS},
               {"type": "text", "text": INSTRUCTION.format(text_prompt=prompt) + SUFFIX}]
    text = s.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                           add_generation_prompt=True)
    batch = s.processor(text=[text], images=[upstream_fetch_image(image)], padding=True, return_tensors="pt")
    vlm = s.net.model
    with torch.no_grad():
        embeds = vlm.language_model.embed_tokens(batch["input_ids"])
        pixels = batch["pixel_values"].type(vlm.visual.get_dtype())
        image_embeds = vlm.visual(pixels, grid_thw=batch["image_grid_thw"]).pooler_output
        mask = (batch["input_ids"] == vlm.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))
        position_ids = None
        if positions == "mrope":
            position_ids, _ = vlm.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                 image_grid_thw=batch["image_grid_thw"],
                                                 attention_mask=batch["attention_mask"])
        hidden = vlm.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                    position_ids=position_ids, use_cache=False).last_hidden_state
        logits = s.net.rm_head(hidden.float())
        at = batch["input_ids"][0].tolist().index(s.reward_id)
    return logits[0, at]  # (mu, sigma)


# every size and every mode, each mode at two sizes (the preparation test covers every combination)
CASES = [(w, h, MODES[i % len(MODES)]) for i, (w, h) in enumerate(SIZES)]
PROMPTS = ["a cat", "a red dog under a tree", "x", "two green apples on a wooden table, photograph", "", "a b c",
           "星空", "a cat"]


def test_score_is_upstreams_mu_on_every_size_and_mode(hps):
    images = [noise_image(w, h, seed=i, mode=mode) for i, (w, h, mode) in enumerate(CASES)]
    expected = [upstream_reward(hps, im, p)[0].item() for im, p in zip(images, PROMPTS)]
    got = hps.score(images, PROMPTS, batch_size=4)  # batched with right padding
    assert got == pytest.approx(expected, abs=1e-6, rel=0)
    spread = max(expected) - min(expected)
    assert spread > 100e-6  # the tolerance tells the images apart
    # what upstream does NOT do would be caught: the image's 2-D rotary positions move the score beyond it
    mrope = upstream_reward(hps, images[0], PROMPTS[0], positions="mrope")[0].item()
    assert abs(mrope - expected[0]) > 10e-6


def test_the_score_is_mu_not_sigma(hps):
    image, prompt = noise_image(90, 40, 2, "RGBA"), "a red dog"
    mu, sigma = upstream_reward(hps, image, prompt).tolist()
    rewards = hps.rewards([hps.transform(image)], [prompt])[0].tolist()
    assert rewards == pytest.approx([mu, sigma], abs=1e-6) and abs(mu - sigma) > 1e-4
    assert hps.score([image], [prompt]) == pytest.approx([mu], abs=1e-6)


def test_head_and_backbone_dtypes(hps):
    assert all(p.dtype == torch.float32 for p in hps.net.rm_head.parameters())
    bf16 = load_scorer("hpsv3:tiny", dtype="bfloat16")
    assert bf16.net.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.net.rm_head.parameters())  # head in float32, as upstream
    images = [noise_image(64, 64, 1), noise_image(300, 200, 2)]
    assert bf16.score(images, ["a", "b"]) == pytest.approx(hps.score(images, ["a", "b"]), abs=3e-3)


# ---------------------------------------------------------------------------------------------------------------
# Real architecture and checkpoint layout

def test_real_architecture_is_qwen2_vl_7b_with_the_ranknet_head():
    from transformers import Qwen2VLConfig

    from aifeedback.scoring.scorers.hpsv3 import REAL_CONFIG, REAL_VOCAB, HPSv3Net

    config = Qwen2VLConfig(**REAL_CONFIG)
    config.text_config.vocab_size = REAL_VOCAB
    with torch.device("meta"):
        net = HPSv3Net(config)
    backbone = sum(p.numel() for p in net.model.parameters())
    # + Qwen2-VL-7B's lm_head and its 152064-row embedding: Qwen/Qwen2-VL-7B-Instruct's 8.29B parameters
    assert backbone + 152064 * 3584 + (152064 - REAL_VOCAB) * 3584 == pytest.approx(8.29e9, rel=2e-3)
    assert {k: tuple(v.shape) for k, v in net.rm_head.state_dict().items()} == {
        "0.weight": (1024, 3584), "0.bias": (1024,), "3.weight": (16, 1024), "3.bias": (16,),
        "5.weight": (2, 16), "5.bias": (2,)}
    assert len(net.model.visual.blocks) == 32 and len(net.model.language_model.layers) == 28
    assert net.model.language_model.embed_tokens.weight.shape == (151658, 3584)


def tiny_folder():
    from aifeedback.scoring.scorers.hpsv3 import build_tiny
    from aifeedback.zoo.cache import cached_build

    return cached_build("scorer-hpsv3-tiny", build_tiny)


def test_tiny_checkpoint_has_the_upstream_layout(hps):
    from safetensors.torch import load_file

    from aifeedback.scoring.scorers.hpsv3 import CHECKPOINT, convert_state_dict

    state = load_file(str(tiny_folder() / CHECKPOINT))
    for key in ("visual.patch_embed.proj.weight", "visual.blocks.0.attn.qkv.weight", "visual.merger.mlp.0.weight",
                "model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight", "model.norm.weight",
                "lm_head.weight", "rm_head.0.weight", "rm_head.5.bias"):
        assert key in state, key
    assert state["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert state["rm_head.0.weight"].dtype == torch.float32
    assert state["model.embed_tokens.weight"].shape[0] == len(hps.processor.tokenizer)  # resized for <|Reward|>
    assert set(convert_state_dict(state)) == set(hps.net.state_dict())


def test_a_pt_state_dict_loads_with_weights_only_and_other_pickles_are_refused(hps, tmp_path):
    import argparse

    from safetensors.torch import load_file

    from aifeedback.scoring.scorers.hpsv3 import CHECKPOINT

    folder = tmp_path / "hpsv3"
    shutil.copytree(tiny_folder(), folder, ignore=shutil.ignore_patterns(CHECKPOINT, "*.lock", ".complete*"))
    state = load_file(str(tiny_folder() / CHECKPOINT))
    torch.save({"model": state}, folder / "HPSv3_7B.pth")  # upstream's loader unwraps "model" too
    images = [noise_image(64, 64, 1)]
    assert load_scorer(f"hpsv3:{folder}").score(images, ["a"]) == pytest.approx(hps.score(images, ["a"]), abs=1e-7)

    torch.save({"model": state, "args": argparse.Namespace(lr=1)}, folder / "HPSv3_7B.pth")
    with pytest.raises(AifError, match=r"pickle that needs more than tensors.*weights_only=True.*Fix: convert") as e:
        load_scorer(f"hpsv3:{folder}")
    assert "\n" not in str(e.value)

    from aifeedback.scoring.scorers.hpsv3 import read_checkpoint

    with pytest.raises(FileNotFoundError, match="is not a file"):
        read_checkpoint(folder / "HPSv3.safetensors")

    del state["rm_head.5.weight"]
    torch.save(state, folder / "HPSv3_7B.pth")
    with pytest.raises(AifError, match=r"(?s)could not load.*missing \['rm_head.5.weight'\]"):
        load_scorer(f"hpsv3:{folder}")


# ---------------------------------------------------------------------------------------------------------------
# Registry and preflight

def test_registry_lists_hpsv3(tmp_path):
    names = list_scorers()
    assert "MizzenAI/HPSv3" in names["hpsv3"] and "Qwen2-VL" in names["hpsv3"]
    with pytest.raises(UnknownScorerError, match="Did you mean 'hpsv3'"):
        check_scorers(["hpsv33:tiny"])
    check_scorers(["hpsv3", "hpsv3:tiny"])
    with pytest.raises(AifError, match="does not exist"):
        check_scorers([f"hpsv3:{tmp_path / 'HPSv3.safetensors'}"])
    with pytest.raises(AifError, match="(?s)could not load.*NAME:tiny"):  # HF_HUB_OFFLINE=1 in tests
        load_scorer(f"hpsv3:{tmp_path}")


def test_aif_score_runs_hpsv3_with_decoding_workers(hps, tmp_path):
    """`aif score` (the path eval and loop share): images decoded and prepared in a DataLoader worker, scored in
    batches; each image's stored score is the scorer's own on the decoded file."""
    import io

    from aifeedback.stages.score import run
    from tests.test_score import cfg, image_scores, make_generate_dir

    gen = tmp_path / "gen"
    rows = make_generate_dir(gen, n_prompts=2, k=2, latents=False)
    summary = run(cfg(input=str(gen), out=str(tmp_path / "pairs"), scorer="hpsv3:tiny", batch_size=3, workers=1))
    assert summary["counts"]["pairs"] == 2
    stored = {r["row"]: r["raw"][0] for r in image_scores(tmp_path / "pairs")}  # one shard: row = input order
    own = hps.score([Image.open(io.BytesIO(r["image"])) for r in rows], [r["prompt"] for r in rows])
    assert [stored[i] for i in range(len(rows))] == pytest.approx(own, abs=1e-6)
