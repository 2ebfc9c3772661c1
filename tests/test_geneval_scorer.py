"""The `geneval` scorer: transformers' Mask2Former run as mmdet's pipeline runs it, the colour classifier as
clip_benchmark's zero-shot one, the tiny variant end to end, unknown prompts refused."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from aifeedback.errors import AifError
from aifeedback.evaluation import geneval as rules
from aifeedback.scoring.scorers import geneval as G
from aifeedback.scoring.scorers import list_scorers, load_scorer
from aifeedback.scoring.scorers.base import OPENAI_MEAN, OPENAI_STD


@pytest.fixture(scope="module")
def tiny(aif_cache):
    return load_scorer("geneval:tiny")


def test_registered():
    assert "geneval" in list_scorers() and "Mask2Former" in list_scorers()["geneval"]


def test_a_detector_without_the_80_coco_classes_is_refused(tmp_path, aif_cache):
    config = G.tiny_detector_config()
    config.num_labels, config.id2label, config.label2id = 5, {i: f"c{i}" for i in range(5)}, None
    G.Mask2FormerDetector(config).save_pretrained(tmp_path)
    with pytest.raises(AifError, match="has 5 classes; GenEval reads the 80 COCO classes"):
        load_scorer(f"geneval:{tmp_path}")


def test_detector_equals_transformers_universal_segmentation(tmp_path, monkeypatch):
    """Our inference class loads a Mask2FormerForUniversalSegmentation checkpoint and gives its logits (the
    upstream class needs scipy only for its training loss; the check is switched off here to build it)."""
    from transformers.models.mask2former import modeling_mask2former as m2f

    monkeypatch.setattr(m2f, "requires_backends", lambda *a, **k: None)
    torch.manual_seed(1)
    ref = m2f.Mask2FormerForUniversalSegmentation(G.tiny_detector_config()).eval()
    ref.save_pretrained(tmp_path)
    ours = G.Mask2FormerDetector.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = ref(pixel_values=x)
        cls, masks = ours(x)
    assert torch.equal(cls, expected.class_queries_logits) and torch.equal(masks, expected.masks_queries_logits)


@pytest.mark.parametrize("hw,resized,padded", [((512, 512), (800, 800), (800, 800)),
                                               ((768, 1024), (800, 1067), (800, 1088)),  # 800/768 binds
                                               ((300, 2000), (200, 1333), (224, 1344))])  # 1333/2000 binds
def test_detector_input_is_mmdets_test_pipeline(hw, resized, padded):
    # mmcv rescale: factor = min(1333 / long, 800 / short), sides int(side * factor + 0.5); hand-computed above
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, *hw), dtype=np.uint8))
    x, size = G.detector_input(pixels)
    assert size == resized and tuple(x.shape[1:]) == padded
    assert torch.all(x[:, resized[0]:, :] == 0) and torch.all(x[:, :, resized[1]:] == 0)  # padded after Normalize
    # inside: bilinear pixels rounded to 8 bits, then ImageNet mean/std (red channel: mean 123.675, std 58.395);
    # float64 here vs float32 there may round an exact half the other way: one 8-bit level at most
    up = torch.nn.functional.interpolate(pixels[None].double(), size=resized, mode="bilinear", align_corners=False)
    expect = (np.round(up[0, 0].numpy()).clip(0, 255) - 123.675) / 58.395
    diff = np.abs(x[0, : resized[0], : resized[1]].numpy() - expect)
    assert diff.max() <= 1 / 58.395 + 1e-5 and (diff > 1e-5).mean() < 0.01


def mmdet_mask2bbox(masks):
    """mmdet.core.mask.mask2bbox, re-derived: per mask the first/last column and row that hold a pixel."""
    out = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        xs, ys = np.where(m.any(axis=0))[0], np.where(m.any(axis=1))[0]
        if len(xs) and len(ys):
            out[i] = [xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]
    return out


def test_mask_boxes_equal_mmdet():
    rng = np.random.default_rng(0)
    masks = rng.random((20, 17, 23)) > 0.97
    masks[3] = False  # empty -> zeros
    masks[4] = False
    masks[4, 5, 7] = True  # one pixel -> (7, 5, 8, 6)
    ours = G.mask_boxes(torch.from_numpy(masks)).numpy()
    np.testing.assert_array_equal(ours, mmdet_mask2bbox(masks))
    assert ours[4].tolist() == [7, 5, 8, 6] and ours[3].tolist() == [0, 0, 0, 0]


def mmdet_instances(class_logits, mask_logits, padded, resized, size):
    """mmdet 2.x MaskFormerFusionHead (upsample, crop, upsample) + instance_postprocess, re-derived in numpy/torch:
    (labels, boxes, scores) of the 100 best (query, class) pairs."""
    probs = torch.softmax(class_logits.double(), -1)[:, :-1].numpy()
    q, c = probs.shape
    flat = probs.reshape(-1)
    top = np.argsort(-flat, kind="stable")[:100]
    m = torch.nn.functional.interpolate(mask_logits[None].double(), size=padded, mode="bilinear", align_corners=False)
    m = m[..., : resized[0], : resized[1]]
    m = torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)[0].numpy()
    out = []
    for k in top:
        mk = m[k // c]
        binary = mk > 0
        mask_score = (1 / (1 + np.exp(-mk)) * binary).sum() / (binary.sum() + 1e-6)
        out.append((int(k % c), mmdet_mask2bbox(binary[None])[0].tolist(), flat[k] * mask_score))
    return out


def test_detections_equal_mmdet_postprocessing():
    names = rules.class_names()
    torch.manual_seed(0)
    q = 6
    class_logits = torch.randn(q, 81) * 0.5
    class_logits[0, names.index("dog")] = 9.0  # confident dog
    class_logits[1, names.index("dog")] = 6.0
    class_logits[2, names.index("cat")] = 8.0
    class_logits[3, names.index("cat")] = 2.5  # near the thresholds
    mask_logits = torch.randn(q, 25, 32) * 3  # 1/4 of the padded (100, 128) input; image resized (100, 120)
    found = G.detections(class_logits, mask_logits, (100, 128), (100, 120), (50, 60), names, min_score=0.0)
    ref = mmdet_instances(class_logits, mask_logits, (100, 128), (100, 120), (50, 60))
    ours = sorted((names.index(n), list(d.box), d.score) for n, ds in found.items() for d in ds)
    assert len(ours) == len(ref) == 100
    for (l1, b1, s1), (l2, b2, s2) in zip(ours, sorted(ref)):
        assert (l1, b1) == (l2, b2) and s1 == pytest.approx(s2, rel=1e-5)
    kept = G.detections(class_logits, mask_logits, (100, 128), (100, 120), (50, 60), names, min_score=0.3)
    expected = Counter(names[lbl] for lbl, _, s in ref if s > 0.3)
    assert Counter({n: len(v) for n, v in kept.items()}) == expected and expected["dog"] >= 1
    assert all(d.mask.shape == (50, 60) for ds in kept.values() for d in ds)


def test_colours_are_clip_benchmarks_zero_shot_on_upstreams_crops(tiny):
    """Crop on grey outside the mask, CLIP preprocessing, classifier from the three templates per colour."""
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (3, 40, 50), dtype=np.uint8))
    mask = np.zeros((40, 50), bool)
    mask[5:20, 10:30] = True
    dets = [rules.Detection((10.0, 5.0, 30.0, 20.0), 0.9, mask=mask), rules.Detection((0.0, 0.0, 50.0, 40.0), 0.8)]
    got = tiny.colors_of(pixels)("dog", dets)
    # independent: PIL composite/crop, open_clip's own preprocessing at the model's size, normalised mean of
    # normalised template embeddings per colour, argmax of image @ classifier
    import open_clip

    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    grey = Image.new("RGB", image.size, "#999")
    crops = [Image.composite(image, grey, Image.fromarray(mask)).crop((10, 5, 30, 20)), image.crop((0, 0, 50, 40))]
    pre = open_clip.image_transform(224, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    with torch.no_grad():
        feats = tiny.clip.encode_image(torch.stack([pre(c) for c in crops]))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        cols = []
        for colour in rules.COLORS:
            texts = [f"a photo of a {colour} dog", f"a photo of a {colour}-colored dog",
                     f"a photo of a {colour} object"]
            e = tiny.clip.encode_text(tiny.tokenizer(texts))
            e = (e / e.norm(dim=-1, keepdim=True)).mean(0)
            cols.append(e / e.norm())
        expected = [rules.COLORS[i] for i in (feats @ torch.stack(cols, 1)).argmax(1).tolist()]
        # the pieces too, so a wrong crop or template shows even where a random CLIP's argmax would not
        assert torch.allclose(tiny._classifier("dog"), torch.stack(cols, 1), atol=1e-6)
        for det, c in zip(dets, crops):
            ours = G.normalize([tiny.crop_transform(G.crop(image, det))], "cpu", torch.float32)[0]
            assert torch.allclose(ours, pre(c), atol=1e-5)
    assert got == expected


def test_tiny_end_to_end_and_unknown_prompts(tiny, monkeypatch):
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8))
              for i in range(2)]
    prompts = ["a photo of a bench", "a photo of a purple potted plant"]
    assert tiny.score(images, prompts) == [0.0, 0.0]  # a random detector is never confident: nothing found
    with pytest.raises(AifError, match="--prompts geneval"):
        tiny.score(images, ["a photo of a bench", "a cat on the moon"])
    # a detector that sees one purple-ish potted plant: the rules run on its detection and colour
    box = rules.Detection((4.0, 4.0, 40.0, 30.0), 0.95, mask=np.ones((48, 64), bool))
    monkeypatch.setattr(tiny, "detect", lambda items: [{"potted plant": [box]} for _ in items])
    colours = tiny.colors_of(tiny.transform(images[1]))("potted plant", [box])
    judged = tiny.judge([tiny.transform(im) for im in images], ["a photo of a potted plant", prompts[1]])
    assert judged[0] == {"tag": "single_object", "correct": True, "reasons": [], "reward": 1.0}
    assert judged[1]["correct"] == (colours == ["purple"])
    assert judged[1]["reward"] == (1.0 if colours == ["purple"] else 0.5)
    # two potted plants for "a potted plant": upstream's verdict passes (>= 1), the reward is 1 - 1/1 = 0
    monkeypatch.setattr(tiny, "detect", lambda items: [{"potted plant": [box, box]} for _ in items])
    items = [tiny.transform(images[0])]
    assert tiny.score_items(items, ["a photo of a potted plant"]) == [0.0]
    monkeypatch.setattr(tiny, "verdict", True)  # what the geneval-verdict scorer is
    assert tiny.score_items(items, ["a photo of a potted plant"]) == [1.0]


@pytest.mark.slow  # ~9-14 s on 2 shared cores: the tiny detector still sees 800x800 inputs
def test_aif_score_runs_the_tiny_geneval_scorer_on_geneval_prompts(tmp_path):
    from aifeedback.stages.score import run
    from aifeedback.storage.manifest import finish_output, prepare_output
    from aifeedback.storage.shards import write_shard
    from tests.test_score import cfg, image_bytes, image_scores

    gen, rows = tmp_path / "gen", []
    for p, prompt in enumerate(["a photo of a bench", "a photo of two backpacks"]):
        for k in range(2):
            rows.append(dict(prompt_id=f"p{p}", prompt=prompt, k=k, seed=k, width=16, height=16, model="tiny-sd15",
                             image=image_bytes((40 * k, 90, 200), size=(16, 16)), scheduler="ddim", steps=2,
                             guidance=5.0))
    manifest = prepare_output(gen, "generate", {"model": "tiny-sd15"}, {"model": "tiny-sd15", "seed": 0})
    write_shard(gen, 0, rows)
    finish_output(gen, manifest, images=len(rows))
    run(cfg(input=str(gen), out=str(tmp_path / "out"), scorer="geneval:tiny", pairing="all", keep_ties=True))
    scores = image_scores(tmp_path / "out")
    assert len(scores) == 4 and all(r["raw"] == [0.0] for r in scores)  # random detector: nothing, no credit


def test_eval_benchmark_options_are_checked_and_add_the_verdict_scorer():
    from aifeedback.config import ConfigError, build_config
    from aifeedback.stages.evaluate import EvalConfig, benchmark_spec, with_benchmark_scorer

    with pytest.raises(ConfigError, match="pass --prompts geneval"):
        build_config(EvalConfig, dict(base="tiny-sd15", tuned="tiny-sd15", benchmark="geneval"))
    cfg = build_config(EvalConfig, dict(base="b", tuned="t", prompts="geneval", benchmark="geneval",
                                        scorers="pickscore,geneval:tiny"))
    assert with_benchmark_scorer(cfg).scorers == ["pickscore", "geneval:tiny", "geneval-verdict:tiny"]
    cfg.scorers = ["geneval-verdict:/x", "pickscore"]
    assert benchmark_spec(cfg) == "geneval-verdict:/x" and with_benchmark_scorer(cfg).scorers == cfg.scorers
    cfg.scorers, cfg.benchmark = ["pickscore"], None
    assert with_benchmark_scorer(cfg).scorers == ["pickscore"]


def test_eval_with_a_geneval_scorer_refuses_other_prompts_before_generating(tmp_path, tiny_sd15):
    from aifeedback.config import build_config
    from aifeedback.stages.evaluate import EvalConfig, run

    (tmp_path / "p.txt").write_text("a photo of a bench\na cat riding a bicycle on the moon\n")
    for prompts in ("parti", str(tmp_path / "p.txt")):
        with pytest.raises(AifError, match="no task spec for .*--prompts geneval"):
            run(build_config(EvalConfig, dict(base=str(tiny_sd15), tuned=str(tiny_sd15), prompts=prompts, limit=2,
                                              scorers="redness,geneval:tiny", out=str(tmp_path / "eval"))))
        assert not (tmp_path / "eval").exists()  # nothing generated, no output started


@pytest.mark.slow  # ~30 s: two tiny generations and 8 tiny detector passes at 800x800
def test_aif_eval_benchmark_geneval_reports_both_models(tmp_path, tiny_sd15):
    from aifeedback.config import build_config
    from aifeedback.stages.evaluate import EvalConfig, run

    report = run(build_config(EvalConfig, dict(
        base=str(tiny_sd15), tuned=str(tiny_sd15 / "unet"), prompts="geneval", limit=2, seeds_per_prompt=2, steps=2,
        resolution=16, scorers="geneval:tiny", benchmark="geneval", examples=1, sample_prompts=1, thumb=16,
        bootstrap=200, out=str(tmp_path / "eval"))))
    assert set(report["scorers"]) == {"geneval:tiny", "geneval-verdict:tiny"}
    for side in ("base", "tuned"):  # a random detector finds nothing: every single-object image is wrong
        b = report["benchmark"]["geneval"][side]
        assert b["overall"] == {"score": 0.0, "ci_low": 0.0, "ci_high": 0.0} and b["n"] == 4
        assert list(b["tasks"]) == ["single_object"] and b["tasks"]["single_object"]["n_prompts"] == 2
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["benchmark"] == report["benchmark"]
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "## GenEval" in md
    assert "| overall (mean of tasks) | 4 | 0.000 (0.000 - 0.000) | 0.000 (0.000 - 0.000) |" in md
    assert "<h2>GenEval</h2>" in (tmp_path / "eval" / "report.html").read_text()
