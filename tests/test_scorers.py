"""Scorers: preprocessing equals each reference's, formulas, real architectures (meta device), registry, statistics."""

import hashlib
import io

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

from aifeedback.errors import AifError
from aifeedback.scoring.scorers import UnknownScorerError, list_scorers, load_scorer, parse_spec
from aifeedback.scoring.scorers.base import OPENAI_MEAN, OPENAI_STD, ClipTransform, normalize

# Tiny, tall, wide, large, an odd crop margin (227 -> offset floor 1 vs round(1.5) = 2), a longest side of 448 with
# the other side 301 (HPS: round(150.5) = 150, the even side), longest side exactly 224 (HPS upstream neither resizes
# nor pads those), and the square 224.
SIZES = [(17, 90), (300, 701), (801, 240), (1024, 1024), (227, 224), (448, 301), (224, 150), (160, 224), (224, 224)]
# RGBA with a varying alpha (PIL resizes it weighted by alpha), palette (PIL resizes it nearest-neighbour), gray.
MODES = ["RGB", "RGBA", "P", "L"]
# The references and the project run the same float32 arithmetic on the same (bit-identical) resized pixels;
# 1e-6 leaves room for a last-bit difference in the x/255 and mean/std steps (float32 ulp at |x| ~ 2 is 2.4e-7).
# Any real preprocessing difference (one 8-bit level = 1/255/0.27 = 0.015, a one-pixel shift, another filter) is
# orders of magnitude larger.
ATOL = 1e-6


def noise_image(w, h, seed=0, mode="RGB"):
    """Noise (the worst case for any resampling difference) in `mode`; P gets a random 256-colour palette."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "P": 1}[mode]
    image = Image.frombytes(mode, (w, h), rng.integers(0, 256, h * w * channels, dtype=np.uint8).tobytes())
    if mode == "P":
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    return image


def pixels(transform, image):
    return normalize([transform(image)], "cpu", torch.float32)[0]


# ---------------------------------------------------------------------------------------------------------------
# Independent implementations of each upstream's documented steps (REFERENCE.md section 4), with PIL/torchvision
# called as the upstream calls them; none of them uses the project's preprocessing.

def pickscore_upstream(image):
    """CLIPImageProcessor.preprocess as PickScore's pinned transformers 4.27.3 runs it with the config of
    laion/CLIP-ViT-H-14-laion2B-s32B-b79K (shortest_edge 224, crop 224, bicubic, rescale 1/255, OpenAI stats)."""
    arr = np.array(image.convert("RGB"))  # 4.27's convert_to_rgb is a plain PIL convert (alpha dropped)
    h, w = arr.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(224 * long / short)  # get_resize_output_image_size(default_to_square=False)
    nh, nw = (new_long, 224) if w <= h else (224, new_long)
    arr = np.array(Image.fromarray(arr).resize((nw, nh), resample=Image.BICUBIC, reducing_gap=None))
    top, left = (nh - 224) // 2, (nw - 224) // 2  # image_transforms.center_crop
    x = (arr[top : top + 224, left : left + 224] * (1 / 255)).astype(np.float32)  # rescale: float64 -> float32
    x = (x - np.array(OPENAI_MEAN, np.float32)) / np.array(OPENAI_STD, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)


def hpsv2_upstream(image):
    """HPSv2's image_transform(224, is_train=False, resize_longest_max=True): what upstream feeds the model, quirks
    included (4 channels for RGBA, alpha not normalised; no resize nor pad when the longest side is 224)."""
    x = TF.to_tensor(image if image.mode == "RGBA" else image.convert("RGB"))
    h, w = x.shape[1:]
    scale = 224 / float(max(h, w))
    if scale != 1.0:
        new = [round(d * scale) for d in (h, w)]
        # upstream passes no antialias: tensors are antialiased by default since torchvision 0.17; pinned here
        x = TF.resize(x, new, InterpolationMode.BICUBIC, antialias=True)
        pad_h, pad_w = 224 - new[0], 224 - new[1]
        x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return torch.cat([TF.normalize(x[:3], OPENAI_MEAN, OPENAI_STD), x[3:]])


# OpenAI CLIP's `_transform` (the LAION aesthetic predictor's preprocess) and ImageReward's `_transform`: resize and
# crop first, RGB last.
OPENAI_UPSTREAM = Compose([
    Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224), lambda im: im.convert("RGB"), ToTensor(),
    Normalize(OPENAI_MEAN, OPENAI_STD),
])


def hps_expected(image):
    """What the project must give for hpsv2/clip: upstream's colour channels, zero-padded (before normalisation,
    floor half left/top) to 224x224 where upstream leaves a non-square image with a longest side of 224 unpadded."""
    ref = hpsv2_upstream(image)[:3]
    h, w = ref.shape[1:]
    out = normalize([torch.zeros(3, 224, 224)], "cpu", torch.float32)[0]
    out[:, (224 - h) // 2 : (224 - h) // 2 + h, (224 - w) // 2 : (224 - w) // 2 + w] = ref
    return out


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing == the reference implementations

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("w,h", SIZES)
def test_pickscore_preprocessing_is_clip_image_processor_of_transformers_4_27(w, h, mode):
    image = noise_image(w, h, seed=w + 3 * h, mode=mode)
    got = pixels(ClipTransform(224, "transformers"), image)
    assert got.shape == (3, 224, 224)
    torch.testing.assert_close(got, pickscore_upstream(image), atol=ATOL, rtol=0)


@pytest.mark.parametrize("w,h", SIZES[:5])
def test_the_pickscore_reference_is_the_installed_clip_image_processor_on_rgb(w, h):
    # Checks the hand-written reference above against transformers itself. RGB only: transformers >= 4.4x blends
    # RGBA onto white in convert_to_rgb, which 4.27 (PickScore's pin) did not.
    from transformers.models.clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3, do_center_crop=True,
        image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD), do_convert_rgb=True,
    )
    image = noise_image(w, h, seed=w)
    expected = torch.as_tensor(np.asarray(proc(images=image, return_tensors="np")["pixel_values"][0]))
    torch.testing.assert_close(pickscore_upstream(image), expected.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("w,h", SIZES)
def test_hps_and_clip_preprocessing_is_hpsv2_float_resize_longest_and_pad(w, h, mode):
    image = noise_image(w, h, seed=2 * w + h, mode=mode)
    got = pixels(ClipTransform(224, "hpsv2"), image)
    assert got.shape == (3, 224, 224)
    torch.testing.assert_close(got, hps_expected(image), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("w,h", SIZES)
def test_aesthetic_and_imagereward_preprocessing_is_openai_clip_transform(w, h, mode):
    image = noise_image(w, h, seed=w + h, mode=mode)
    got = pixels(ClipTransform(224, "openai"), image)
    torch.testing.assert_close(got, OPENAI_UPSTREAM(image), atol=ATOL, rtol=0)


def test_hps_quirks_the_project_resolves():
    # Where upstream HPSv2 cannot score an image, the project pads (longest side 224) and drops alpha (RGBA).
    wide = noise_image(224, 150, seed=5)
    assert hpsv2_upstream(wide).shape == (3, 150, 224)  # upstream: not square, fits neither a batch nor ViT-H-14
    padded = ClipTransform(224, "hpsv2")(wide)
    assert padded.shape == (3, 224, 224) and padded.dtype == torch.float32
    assert padded[:, :37].abs().sum() == 0 and padded[:, 37 + 150 :].abs().sum() == 0  # 74 rows: 37 above, 37 below
    rgba = noise_image(100, 60, seed=6, mode="RGBA")
    assert hpsv2_upstream(rgba).shape == (4, 224, 224)  # upstream: a 4th channel the 3-channel model rejects
    assert ClipTransform(224, "hpsv2")(rgba).shape == (3, 224, 224)


def test_hps_resizes_float_pixels_without_8_bit_rounding():
    # Upscaled noise: values between the 8-bit levels, and bicubic overshoot outside [0, 1] is kept (not clamped).
    x = ClipTransform(224, "hpsv2")(noise_image(40, 30, seed=7))
    levels = x * 255
    assert (levels - levels.round()).abs().max() > 0.1
    assert x.min() < 0 or x.max() > 1


@pytest.mark.parametrize("mode,same", [("RGB", True), ("L", True), ("P", False), ("RGBA", False)])
def test_rgb_before_or_after_the_resize_differs_for_palette_and_rgba(mode, same):
    # 300x200 -> 336x224, margin 112: both crops start at 56, so only where the RGB conversion happens differs
    # (transformers/PickScore: first; OpenAI CLIP/aesthetic/ImageReward: last).
    image = noise_image(300, 200, seed=8, mode=mode)
    assert torch.equal(ClipTransform(224, "transformers")(image), ClipTransform(224, "openai")(image)) == same


def test_crop_offsets_differ_where_the_references_differ():
    # 227x224: margin 3 -> transformers floors the offset (1), torchvision rounds it (round(1.5) = 2).
    image = noise_image(227, 224, seed=3)
    a = ClipTransform(224, "transformers")(image)
    b = ClipTransform(224, "openai")(image)
    assert not torch.equal(a, b)
    assert torch.equal(a[:, :, 1:], b[:, :, :-1])


def test_pad_keeps_the_whole_image_and_crop_cuts_the_sides():
    arr = np.full((224, 448, 3), 128, dtype=np.uint8)
    arr[:, :16] = (255, 0, 0)  # a red band on the left edge
    image = Image.fromarray(arr)
    padded = ClipTransform(224, "hpsv2")(image)
    cropped = ClipTransform(224, "transformers")(image)
    assert padded[:, :56].sum() == 0 and padded[:, -56:].sum() == 0  # zero padding above and below
    assert padded[0, 112, 2] > 0.8 and padded[1, 112, 2] < 0.2  # the red band survives
    assert int(cropped[0].max()) <= 140  # the crop removed it


def test_each_scorer_uses_its_reference_preprocessing():
    assert load_scorer("pickscore:tiny").transform == ClipTransform(224, "transformers")
    assert load_scorer("aesthetic:tiny").transform == ClipTransform(224, "openai")
    assert load_scorer("imagereward:tiny").transform == ClipTransform(224, "openai")
    assert load_scorer("hpsv2:tiny").transform == ClipTransform(224, "hpsv2")
    assert load_scorer("clip:tiny").transform == ClipTransform(224, "hpsv2")  # one shared preprocessing in aif score
    with pytest.raises(ValueError, match="use transformers, openai or hpsv2"):
        ClipTransform(224, "pad")


def test_the_score_pipeline_hands_each_transform_the_file_as_stored():
    # aif score's DataLoader decodes PNG bytes; a palette or RGBA file must reach the "openai" transform unconverted.
    from aifeedback.scoring.loop import GroupImages, ImageGroup, TableImages

    class Rows:
        def __init__(self, images):
            self.images = images

        def take(self, rows, columns):
            return [{"image": self.images[r]} for r in rows]

    images = [noise_image(90, 60, seed=9, mode=m) for m in MODES]
    files = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        files.append(buf.getvalue())
    transforms = [ClipTransform(224, "openai"), ClipTransform(224, "hpsv2"), ClipTransform(224, "transformers")]
    group = ImageGroup(0, [[(i, (i, "image"), "p") for i in range(len(files))]])
    chunk = next(iter(GroupImages(TableImages(Rows(files)), [group], transforms, batch_size=8)))
    assert chunk["errors"] == [None] * len(files)
    for t, items in zip(transforms, chunk["items"]):
        torch.testing.assert_close(items, torch.stack([t(im) for im in images]), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Formulas (end to end: the expected values use the upstream preprocessing above)

IMAGES = [noise_image(96, 64, seed=i, mode=m) for i, m in enumerate(MODES)]
PROMPTS = ["a red fox in snow", "a blue car", "a red fox in snow", "a bowl of soup"]


def upstream_batch(preprocess):
    return torch.stack([preprocess(im) for im in IMAGES])


def test_pickscore_is_logit_scale_exp_times_cosine():
    s = load_scorer("pickscore:tiny")
    tok = s.tokenizer(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = s.model(pixel_values=upstream_batch(pickscore_upstream), **tok)  # logits = logit_scale.exp() * cos
    expected = out.logits_per_image.diagonal()
    got = torch.tensor(s.score(IMAGES, PROMPTS))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert s.model.logit_scale.exp().item() == pytest.approx(np.exp(2.6592), rel=1e-5)


@pytest.mark.parametrize("spec", ["clip:tiny", "hpsv2:tiny"])
def test_clip_and_hps_are_cosines(spec):
    s = load_scorer(spec)
    with torch.no_grad():
        img = s.model.encode_image(upstream_batch(hps_expected), normalize=True)
        txt = s.model.encode_text(s.tokenizer(PROMPTS), normalize=True)
    torch.testing.assert_close(torch.tensor(s.score(IMAGES, PROMPTS)), (img * txt).sum(-1), atol=1e-5, rtol=1e-5)


def test_hps_tiny_loads_through_the_hps_checkpoint_format(tmp_path):
    from aifeedback.scoring.scorers import hpsv2
    from aifeedback.zoo.cache import cached_build

    s = load_scorer("hpsv2:tiny")
    ckpt = torch.load(cached_build("scorer-hpsv2-tiny", hpsv2.build_tiny) / "HPS_tiny.pt", weights_only=True)
    assert set(ckpt) == {"state_dict"}
    for k, v in s.model.state_dict().items():
        torch.testing.assert_close(v, ckpt["state_dict"][k])
    with pytest.raises(AifError, match="unknown HPS model"):
        load_scorer(f"hpsv2:{tmp_path / 'missing.pt'}")


def test_aesthetic_is_mlp_of_normalised_embedding_and_ignores_prompt():
    s = load_scorer("aesthetic:tiny")
    with torch.no_grad():
        emb = s.model.encode_image(upstream_batch(OPENAI_UPSTREAM))
        expected = s.head.layers(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    got = s.score(IMAGES, PROMPTS)
    torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=1e-5)
    assert s.score(IMAGES, ["x"] * 4) == got
    assert not s.uses_prompt


def test_scores_do_not_depend_on_batching():
    s = load_scorer("pickscore:tiny")
    together = s.score(IMAGES, PROMPTS, batch_size=4)
    alone = [s.score([im], [p])[0] for im, p in zip(IMAGES, PROMPTS)]
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_bfloat16_scores_track_float32():
    a = np.array(load_scorer("clip:tiny").score(IMAGES, PROMPTS))
    b = np.array(load_scorer("clip:tiny", dtype="bfloat16").score(IMAGES, PROMPTS))
    np.testing.assert_allclose(a, b, atol=0.05)


# ---------------------------------------------------------------------------------------------------------------
# Full-size architectures (meta device: shapes only, nothing allocated or downloaded)

def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_pickscore_architecture_matches_the_real_checkpoint_layout():
    from transformers import CLIPConfig, CLIPModel

    from aifeedback.scoring.scorers.pickscore import REAL_CONFIG

    with torch.device("meta"):
        model = CLIPModel(CLIPConfig(**REAL_CONFIG))
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == (1280, 3, 14, 14)
    assert shapes["vision_model.embeddings.position_embedding.weight"] == (257, 1280)  # (224/14)^2 + 1
    assert shapes["vision_model.embeddings.class_embedding"] == (1280,)
    assert shapes["vision_model.encoder.layers.31.mlp.fc1.weight"] == (5120, 1280)
    assert shapes["visual_projection.weight"] == (1024, 1280)
    assert shapes["text_model.embeddings.token_embedding.weight"] == (49408, 1024)
    assert shapes["text_model.embeddings.position_embedding.weight"] == (77, 1024)
    assert shapes["text_model.encoder.layers.23.self_attn.q_proj.weight"] == (1024, 1024)
    assert shapes["text_projection.weight"] == (1024, 1024)
    assert shapes["logit_scale"] == ()
    assert "vision_model.encoder.layers.32.mlp.fc1.weight" not in shapes
    assert "text_model.encoder.layers.24.mlp.fc1.weight" not in shapes
    # 16 tensors per layer x (24 text + 32 vision) + embeddings/norms/projections/logit_scale
    assert len(shapes) == 16 * 56 + 14
    assert n_params(model) == 986_109_441  # CLIP ViT-H/14: 986.11M, the same as open_clip's ViT-H-14


def test_open_clip_vit_h_14_matches_the_laion_and_hps_checkpoint_layout():
    import open_clip

    with torch.device("meta"):
        model = open_clip.CLIP(**open_clip.get_model_config("ViT-H-14"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "visual.conv1.weight": (1280, 3, 14, 14), "visual.class_embedding": (1280,),
        "visual.positional_embedding": (257, 1280), "visual.proj": (1280, 1024),
        "visual.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "visual.transformer.resblocks.31.mlp.c_fc.weight": (5120, 1280),
        "token_embedding.weight": (49408, 1024), "positional_embedding": (77, 1024),
        "transformer.resblocks.23.attn.in_proj_weight": (3072, 1024), "text_projection": (1024, 1024),
        "ln_final.weight": (1024,), "logit_scale": (),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert len(shapes) == 12 * (32 + 24) + 14  # 12 tensors per residual block + 14 others
    assert n_params(model) == 986_109_441


def test_open_clip_vit_l_14_matches_the_openai_layout_used_by_aesthetic():
    import open_clip

    with torch.device("meta"):
        model = open_clip.CLIP(**open_clip.get_model_config("ViT-L-14-quickgelu"))
    sd = model.state_dict()
    assert tuple(sd["visual.proj"].shape) == (1024, 768)  # 768-d embedding = the aesthetic head's input
    assert tuple(sd["visual.positional_embedding"].shape) == (257, 1024)
    assert tuple(sd["text_projection"].shape) == (768, 768)
    assert n_params(model) == 427_616_513  # ViT-L/14: 427.62M


def test_imagereward_architecture_matches_the_upstream_checkpoint_layout():
    # THUDM/ImageReward's ImageReward.pt: BLIP's timm-style ViT-L/16 (visual_encoder), BLIP's BERT with
    # cross-attention (text_encoder, names as in BLIP's med.py) and the MLP head, under their upstream names.
    from aifeedback.scoring.scorers import imagereward as ir

    D, W, F, V = 1024, 768, 4096, 30524
    expected = {"blip.visual_encoder.cls_token": (1, 1, D), "blip.visual_encoder.pos_embed": (1, 197, D),
                "blip.visual_encoder.patch_embed.proj.weight": (D, 3, 16, 16),
                "blip.visual_encoder.patch_embed.proj.bias": (D,),
                "blip.visual_encoder.norm.weight": (D,), "blip.visual_encoder.norm.bias": (D,)}
    for i in range(24):
        b = f"blip.visual_encoder.blocks.{i}."
        expected.update({b + "norm1.weight": (D,), b + "norm1.bias": (D,), b + "attn.qkv.weight": (3 * D, D),
                         b + "attn.qkv.bias": (3 * D,), b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
                         b + "norm2.weight": (D,), b + "norm2.bias": (D,), b + "mlp.fc1.weight": (F, D),
                         b + "mlp.fc1.bias": (F,), b + "mlp.fc2.weight": (D, F), b + "mlp.fc2.bias": (D,)})
    t = "blip.text_encoder."
    expected.update({t + "embeddings.word_embeddings.weight": (V, W),
                     t + "embeddings.position_embeddings.weight": (512, W),
                     t + "embeddings.LayerNorm.weight": (W,), t + "embeddings.LayerNorm.bias": (W,)})
    for i in range(12):
        b = f"{t}encoder.layer.{i}."
        for att, kv in (("attention", W), ("crossattention", D)):
            for proj, width in (("query", W), ("key", kv), ("value", kv)):
                expected.update({f"{b}{att}.self.{proj}.weight": (W, width), f"{b}{att}.self.{proj}.bias": (W,)})
            expected.update({f"{b}{att}.output.dense.weight": (W, W), f"{b}{att}.output.dense.bias": (W,),
                             f"{b}{att}.output.LayerNorm.weight": (W,), f"{b}{att}.output.LayerNorm.bias": (W,)})
        expected.update({b + "intermediate.dense.weight": (3072, W), b + "intermediate.dense.bias": (3072,),
                         b + "output.dense.weight": (W, 3072), b + "output.dense.bias": (W,),
                         b + "output.LayerNorm.weight": (W,), b + "output.LayerNorm.bias": (W,)})
    for j, (o, i) in zip((0, 2, 4, 6, 7), ((1024, W), (128, 1024), (64, 128), (16, 64), (1, 16))):
        expected.update({f"mlp.layers.{j}.weight": (o, i), f"mlp.layers.{j}.bias": (o,)})
    with torch.device("meta"):
        net = ir.build_net(ir.VISION, ir.TEXT)
    assert {k: tuple(v.shape) for k, v in ir.upstream_state_dict(net).items()} == expected
    assert net["vision"].config.layer_norm_eps == 1e-6  # BLIP's ViT (transformers' BLIP default is 1e-5)


def test_shipped_aesthetic_head_weights():
    from aifeedback.scoring.scorers.aesthetic import HEAD, head

    assert (
        hashlib.sha256(HEAD.read_bytes()).hexdigest()
        == "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
    )
    sd = torch.load(HEAD, map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
        "layers.6.weight": (16, 64), "layers.6.bias": (16,), "layers.7.weight": (1, 16), "layers.7.bias": (1,),
    }
    mlp = head()
    assert not mlp.training
    # Real weights on unit-norm embeddings land on the AVA scale, roughly 1..10.
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(8, 768), dim=-1)
    with torch.no_grad():
        y = mlp.layers(x)
    assert torch.all((y > -5) & (y < 15))


# ---------------------------------------------------------------------------------------------------------------
# Registry

def test_registry_lists_every_scorer():
    names = list_scorers()
    for n in ("pickscore", "clip", "aesthetic", "hpsv2", "imagereward", "redness", "brightness", "saturation", "color"):
        assert n in names and names[n]
    assert "yuvalkirstain/PickScore_v1" in names["pickscore"]


def test_unknown_scorer_lists_the_valid_ones():
    with pytest.raises(UnknownScorerError) as e:
        load_scorer("pickscor")
    msg = str(e.value)
    assert "Did you mean 'pickscore'" in msg and "hpsv2" in msg and "redness" in msg


def test_spec_parsing():
    assert parse_spec("pickscore") == ("pickscore", None)
    assert parse_spec("hpsv2:v2.1") == ("hpsv2", "v2.1")
    assert parse_spec("clip:/models/my clip") == ("clip", "/models/my clip")
    assert parse_spec("PickScore:tiny") == ("pickscore", "tiny")
    assert load_scorer("pickscore:tiny").name == "pickscore:tiny"


def test_bad_models_give_clear_errors(tmp_path):
    with pytest.raises(AifError, match="unknown HPS model 'v3'.*v2.0, v2.1"):
        load_scorer("hpsv2:v3")
    with pytest.raises(AifError, match="unknown colour 'blurple'"):
        load_scorer("color:blurple")
    with pytest.raises(AifError, match="needs a colour"):
        load_scorer("color")
    with pytest.raises(AifError, match="takes no model"):
        load_scorer("redness:tiny")
    with pytest.raises(AifError, match="(?s)could not load.*NAME:tiny"):  # HF_HUB_OFFLINE=1 in tests
        load_scorer(f"pickscore:{tmp_path / 'nope'}")


def test_imagereward_is_the_normalised_mlp_of_the_image_conditioned_cls_feature():
    from aifeedback.scoring.scorers.imagereward import MAX_LENGTH, MEAN, STD

    s = load_scorer("imagereward:tiny")
    tok = s.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    assert tok.input_ids.shape == (4, 35) and (tok.input_ids[:, 0] == s.tokenizer.cls_token_id).all()
    assert s.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(s.tokenizer) - 2, len(s.tokenizer) - 1]
    with torch.no_grad():
        image = s.net["vision"](pixel_values=upstream_batch(OPENAI_UPSTREAM)).last_hidden_state
        text = s.net["text"](input_ids=tok.input_ids, attention_mask=tok.attention_mask, encoder_hidden_states=image,
                             is_decoder=False).last_hidden_state
        expected = (s.net["mlp"](text[:, 0]).squeeze(-1) - MEAN) / STD
    got = s.score(IMAGES, PROMPTS)
    torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=1e-5)
    assert s.score(IMAGES, ["a bowl of soup"] * 4) != got  # the prompt matters (through cross-attention)
    assert s.score(IMAGES, PROMPTS, batch_size=1) == pytest.approx(got, abs=1e-5)


def test_imagereward_loads_upstream_checkpoints_and_refuses_other_files(tmp_path):
    from aifeedback.scoring.scorers import imagereward as ir
    from aifeedback.zoo.cache import cached_build

    folder = cached_build("scorer-imagereward-tiny", ir.build_tiny)
    state = torch.load(folder / ir.CHECKPOINT, weights_only=True)
    assert any(k.startswith("blip.visual_encoder.blocks.0.attn.qkv") for k in state)  # stored in upstream names
    extra = dict(
        state,
        **{"blip.vision_proj.weight": torch.zeros(2, 2), "blip.text_encoder.embeddings.position_ids": torch.arange(3)},
    )
    net = ir.build_net(ir.TINY_VISION, ir.TINY_TEXT)
    ir.load_weights(net, extra)  # what upstream ignores is ignored; every weight of ours is there
    del state["mlp.layers.7.weight"]
    with pytest.raises(ValueError, match="missing.*mlp.7.weight"):
        ir.load_weights(net, state)
    bad = tmp_path / "ImageReward.pt"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(AifError, match="could not load"):
        load_scorer(f"imagereward:{bad}")


# ---------------------------------------------------------------------------------------------------------------
# Image statistics

def solid(rgb, size=(20, 10)):
    return Image.new("RGB", size, rgb)


def test_statistics_on_solid_colours():
    red, gray, white, black = solid((255, 0, 0)), solid((128, 128, 128)), solid((255, 255, 255)), solid((0, 0, 0))
    ims = [red, gray, white, black]
    p = [""] * 4
    np.testing.assert_allclose(load_scorer("redness").score(ims, p), [1.0, 0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(load_scorer("brightness").score(ims, p), [0.299, 128 / 255, 1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(load_scorer("saturation").score(ims, p), [1.0, 0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(load_scorer("color:red").score(ims, p)[0], 1.0)
    np.testing.assert_allclose(load_scorer("color:#ffffff").score(ims, p)[2], 1.0)
    assert load_scorer("color:black").score(ims, p)[2] == pytest.approx(0.0)


def test_redness_is_mean_r_minus_mean_gb_in_unit_range():
    arr = np.zeros((4, 4, 3), dtype=np.uint8)
    arr[:2] = (255, 0, 0)  # top half red
    arr[2:] = (0, 0, 255)  # bottom half blue
    s = load_scorer("redness").score([Image.fromarray(arr), solid((0, 255, 255))], ["", ""])
    assert s[0] == pytest.approx(0.5 - (0 + 0.5) / 2)
    assert s[1] == pytest.approx(-1.0)
    rgba = Image.fromarray(np.dstack([arr, np.full((4, 4), 7, np.uint8)]), "RGBA")
    assert load_scorer("redness").score([rgba], [""])[0] == pytest.approx(s[0])  # alpha is dropped


class _Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # unpickling it would create the file: what a crafted checkpoint could do
        return (open, (self.path, "w"))


def test_a_scorer_checkpoint_holding_code_or_damaged_is_refused_in_one_line(tmp_path):
    from aifeedback.scoring.scorers import hpsv2

    marker, crafted = tmp_path / "ran", tmp_path / "ImageReward.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Marker(marker)}, crafted)
    truncated = tmp_path / "HPS.pt"
    truncated.write_bytes(crafted.read_bytes()[:200])
    for load, path, why in [(lambda p: load_scorer(f"imagereward:{p}"), crafted, r"a Python object \(io.open\)"),
                            (lambda p: hpsv2.load_checkpoint(None, str(p)), crafted, r"a Python object \(io.open\)"),
                            (lambda p: hpsv2.load_checkpoint(None, str(p)), truncated, "damaged or not a torch file")]:
        with pytest.raises(AifError, match=f"{path.name}: refused: it .*{why}") as e:
            load(path)
        assert "\n" not in str(e.value) and "weights_only" not in str(e.value) and "Fix:" in str(e.value)
    assert not marker.exists()
