"""GenEval as a reward (`geneval`): the rules of `evaluation/geneval.py` on a detector that loads with transformers.

Upstream (`djghosh13/geneval`, REFERENCE.md section 11) runs mmdet 2.x's Mask2Former Swin-S COCO-instance model and
OpenAI CLIP ViT-L/14 through open_clip. Here, without mmdet:
  detector   the same architecture and training recipe in transformers' format, `DETECTOR` (Mask2Former Swin-S,
             COCO instances), run as mmdet's test pipeline runs it: RGB, keep-ratio resize into 1333x800
             (scale = min(1333 / long side, 800 / short side), sides int(side * scale + 0.5)), bilinear, rounded
             to 8 bits, ImageNet mean/std, zero padding to a multiple of 32; mask logits upsampled (bilinear) to
             the padded input, cropped, upsampled to the image; then mmdet's instance post-processing: the 100
             best (query, class) pairs by softmax class probability (no-object dropped), binary mask = logit > 0,
             score = class probability x mean mask probability inside the mask, box = the mask's extent
             (x1, y1, x_last + 1, y_last + 1; zeros for an empty mask).
  colour     zero-shot CLIP ViT-L/14 (OpenAI weights; open_clip "ViT-L-14-quickgelu", the architecture those
             weights have) on each object's crop: the image composited on grey #999 outside the object's mask,
             cropped to its box, CLIP's preprocessing; text classifier per class = the normalised mean of the
             normalised embeddings of upstream's three templates, per colour; the colour with the highest cosine.
Deviations (README "Benchmarks (GenEval)"): other detector weights (the transformers port of Mask2Former's COCO
Swin-S checkpoint, not mmdet's file) give other detections and so other verdicts near the thresholds, which are
kept; the resize is torch's bilinear, not OpenCV's (a pixel may differ by one 8-bit level).
Score = `partial_credit` (Flow-GRPO's reward), or upstream's verdict as 1/0 (`geneval-verdict`, the benchmark's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Mask2FormerConfig, SwinConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerModel, Mask2FormerPreTrainedModel

from aifeedback.errors import AifError
from aifeedback.evaluation import geneval as rules
from aifeedback.families.loading import torch_dtype
from aifeedback.scoring.scorers import model_error, openclip
from aifeedback.scoring.scorers.base import ClipTransform, Scorer, _rgb, _uint8_chw, normalize
from aifeedback.zoo.cache import cached_build

DETECTOR = "facebook/mask2former-swin-small-coco-instance"
CLIP_ARCH, CLIP_TAG = "ViT-L-14-quickgelu", "openai"
SCALE = (1333, 800)  # mmdet test pipeline's img_scale
MAX_PER_IMAGE = 100  # mmdet test_cfg.max_per_image
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
GREY = "#999"  # upstream's crop background
UPSTREAM = rules.Rules()


class Mask2FormerDetector(Mask2FormerPreTrainedModel):
    """The inference half of transformers' Mask2FormerForUniversalSegmentation (same weights and names): its
    forward without the training loss, whose matcher needs scipy. -> (class logits (B, Q, C + 1), mask logits
    (B, Q, H/4, W/4)) of the last decoder layer."""

    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)
        self.model = Mask2FormerModel(config)
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.post_init()

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        last = out.transformer_decoder_intermediate_states[-1].transpose(0, 1)
        return self.class_predictor(last), out.masks_queries_logits[-1]


def tiny_detector_config() -> Mask2FormerConfig:
    """Mask2Former with a Swin backbone like the real one (4 stages, patch 4, window 7) but tiny widths, 80 classes."""
    swin = SwinConfig(image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=7, out_features=["stage1", "stage2", "stage3", "stage4"])
    names = rules.class_names()
    return Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                             encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                             num_attention_heads=2, num_queries=10, num_labels=len(names),
                             id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})


def real_detector_config() -> Mask2FormerConfig:
    """The architecture of DETECTOR (transformers' defaults are Mask2Former with Swin-S: embed 96, depths 2-2-18-2,
    heads 3-6-12-24, window 7; 100 queries, 256 wide, 6 + 10 layers), with the 80 COCO classes."""
    names = rules.class_names()
    return Mask2FormerConfig(num_labels=len(names), id2label=dict(enumerate(names)),
                             label2id={n: i for i, n in enumerate(names)})


def build_tiny_detector(out: Path) -> None:
    torch.manual_seed(0)
    Mask2FormerDetector(tiny_detector_config()).save_pretrained(out)


def build_tiny_clip(out: Path) -> None:
    openclip.build_tiny(out, openclip.tiny_config(embed_dim=16, quick_gelu=True), seed=3)


@dataclass(frozen=True)
class RgbPixels:
    """An image -> its RGB pixels, uint8 (3, H, W): the detector and the crops need the whole image."""

    def __call__(self, image):
        return _uint8_chw(_rgb(image))


def resized_size(h: int, w: int, scale: tuple[int, int] = SCALE) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size within scale's long x short sides, rounded half up."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def detector_input(pixels: torch.Tensor, scale: tuple[int, int] = SCALE) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 (3, H, W) -> the normalised, zero-padded (3, H', W') input and the resized size before padding."""
    nh, nw = resized_size(*pixels.shape[1:], scale)
    x = torch.nn.functional.interpolate(pixels[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255)[0]  # OpenCV returns 8-bit pixels
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
    return torch.nn.functional.pad(x, (0, pw - nw, 0, ph - nh)), (nh, nw)


def mask_boxes(binary: torch.Tensor) -> torch.Tensor:
    """mmdet's mask2bbox: (N, H, W) bool -> (N, 4) [x1, y1, x_last + 1, y_last + 1], zeros where a mask is empty."""
    cols, rows = binary.any(dim=1), binary.any(dim=2)  # (N, W), (N, H)

    def span(a):
        n = a.shape[1]
        first = a.float().argmax(dim=1)
        last = n - 1 - a.flip(1).float().argmax(dim=1)
        return first.float(), (last + 1).float()

    x1, x2 = span(cols)
    y1, y2 = span(rows)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    return boxes * (cols.any(dim=1) & rows.any(dim=1))[:, None]


def detections(class_logits, mask_logits, padded, resized, size, names, min_score: float = 0.0):
    """One image's mmdet-style instance results as {class name: [Detection]} (those with score > min_score).

    class_logits (Q, C + 1), mask_logits (Q, h, w) at 1/4 of `padded`; `resized` the image inside the padding,
    `size` the original (H, W). A detection's score <= its class probability, so pairs at or under min_score are
    dropped before their masks are upsampled (the same results, less work)."""
    probs = class_logits.float().softmax(-1)[:, :-1]
    n_classes = probs.shape[1]
    scores, index = probs.flatten().topk(min(MAX_PER_IMAGE, probs.numel()), sorted=False)
    keep = scores > min_score
    scores, index = scores[keep], index[keep]
    out: dict[str, list[rules.Detection]] = {}
    if not len(index):
        return out
    masks = mask_logits[index // n_classes][None].float()
    masks = torch.nn.functional.interpolate(masks, size=padded, mode="bilinear", align_corners=False)
    masks = masks[..., : resized[0], : resized[1]]
    masks = torch.nn.functional.interpolate(masks, size=size, mode="bilinear", align_corners=False)[0]
    binary = masks > 0
    mask_score = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    det = (scores * mask_score).cpu().tolist()
    boxes = mask_boxes(binary).cpu().tolist()
    labels = (index % n_classes).cpu().tolist()
    for i, (label, score) in enumerate(zip(labels, det)):
        if score > min_score:
            out.setdefault(names[label], []).append(
                rules.Detection(tuple(boxes[i]), score, mask=binary[i].cpu().numpy()))
    return out


def crop(image, det: rules.Detection):
    """Upstream's colour crop: the object on grey (outside its mask), cropped to its box."""
    from PIL import Image

    if det.mask is not None:
        image = Image.composite(image, Image.new("RGB", image.size, GREY), Image.fromarray(det.mask))
    return image.crop(det.box[:4])


class GenEval(Scorer):
    """GenEval's rules on Mask2Former detections and CLIP colours; score = the partial-credit reward, or with
    `verdict` upstream's verdict as 1/0. `clip_model`: another open_clip model for the colours (MODEL forms)."""

    def __init__(self, name: str, model: str | None, device: str = "cpu", dtype: str = "float32",
                 rule_set: rules.Rules = UPSTREAM, scale: tuple[int, int] = SCALE, clip_model: str | None = None,
                 verdict: bool = False):
        self.name, self.device, self.dtype, self.verdict = name, torch.device(device), torch_dtype(dtype), verdict
        self.rules, self.scale, self.names = rule_set, scale, rules.class_names()
        tiny = model == "tiny"
        path = str(cached_build("scorer-geneval-detector-tiny", build_tiny_detector)) if tiny else model or DETECTOR
        try:
            detector = Mask2FormerDetector.from_pretrained(path, torch_dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise model_error(name, path, e) from None
        if detector.config.num_labels != len(self.names):
            raise AifError(f"scorer '{name}': the detector {path} has {detector.config.num_labels} classes; GenEval "
                           f"reads the {len(self.names)} COCO classes in COCO's order (evaluation/object_names.txt). "
                           f"Fix: pass a Mask2Former COCO-instance checkpoint (e.g. {DETECTOR}) as geneval:PATH.")
        self.detector = detector.eval().to(self.device)
        clip, self.tokenizer = openclip.load_net(name, "tiny" if tiny else clip_model, CLIP_ARCH, CLIP_TAG,
                                                 "scorer-geneval-clip-tiny", build_tiny_clip)
        self.clip = clip.to(self.device, self.dtype)
        self.crop_transform = ClipTransform(openclip.image_size(clip), "openai")
        self.transform = RgbPixels()
        self._classifiers: dict[str, torch.Tensor] = {}

    def detect(self, items) -> list[dict[str, list[rules.Detection]]]:
        """Per image {class: [Detection]} with score above the lowest threshold; inputs of one padded size batched
        together (upstream runs one image at a time: padding only to the image's own multiple of 32)."""
        inputs = [detector_input(p, self.scale) for p in items]
        groups: dict[tuple, list[int]] = {}
        for i, (x, _) in enumerate(inputs):
            groups.setdefault(tuple(x.shape), []).append(i)
        out: list[Any] = [None] * len(inputs)
        floor = min(self.rules.threshold, self.rules.counting_threshold)
        for shape, members in groups.items():
            x = torch.stack([inputs[i][0] for i in members]).to(self.device, self.dtype)
            with torch.inference_mode():
                cls, masks = self.detector(x)
                for j, i in enumerate(members):
                    out[i] = detections(cls[j], masks[j], shape[1:], inputs[i][1], tuple(items[i].shape[1:]),
                                        self.names, floor)
        return out

    def _classifier(self, classname: str) -> torch.Tensor:
        """(D, 10): per colour the normalised mean of the normalised template embeddings (clip_benchmark's)."""
        if classname not in self._classifiers:
            columns = []
            with torch.inference_mode():
                for c in rules.COLORS:
                    texts = [t.format(c=c, obj=classname) for t in rules.COLOR_TEMPLATES]
                    emb = self.clip.encode_text(self.tokenizer(texts).to(self.device)).float()
                    mean = torch.nn.functional.normalize(emb, dim=-1).mean(0)
                    columns.append(mean / mean.norm())
            self._classifiers[classname] = torch.stack(columns, dim=1)
        return self._classifiers[classname]

    def colors_of(self, pixels: torch.Tensor) -> rules.ColorFn:
        """The colour function of one image (uint8 (3, H, W)) for the rules."""
        from PIL import Image

        image = Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())

        def colors(classname: str, objects) -> list[str]:
            crops = normalize([self.crop_transform(crop(image, o)) for o in objects], self.device, self.dtype)
            with torch.inference_mode():
                feats = torch.nn.functional.normalize(self.clip.encode_image(crops).float(), dim=-1)
                logits = 100.0 * feats @ self._classifier(classname)
            return [rules.color_decision(row) for row in logits.cpu().tolist()]

        return colors

    def judge(self, items, prompts: list[str]) -> list[dict[str, Any]]:
        """Per image: task, upstream's verdict and reasons, and the reward (unknown prompts refused at once)."""
        specs = rules.specs_for(prompts)
        items = list(items)
        out = []
        for pixels, spec, found in zip(items, specs, self.detect(items)):
            kept = rules.keep(found, spec["tag"], self.rules)
            colors = _memo(self.colors_of(pixels))
            verdict = rules.verdict(kept, spec, colors, self.rules)
            out.append({"tag": spec["tag"], "correct": verdict.correct, "reasons": verdict.reasons,
                        "reward": rules.partial_credit(kept, spec, colors, self.rules)})
        return out

    def score_items(self, items, prompts: list[str]) -> list[float]:
        if self.verdict:
            return [float(r["correct"]) for r in self.judge(items, prompts)]
        return [r["reward"] for r in self.judge(items, prompts)]


def _memo(colors: rules.ColorFn) -> rules.ColorFn:
    """Colours of each object computed once for the verdict and the reward (they ask about the same objects)."""
    seen: dict[int, str] = {}

    def cached(classname, objects):
        todo = [o for o in objects if id(o) not in seen]
        if todo:
            seen.update(zip(map(id, todo), colors(classname, todo)))
        return [seen[id(o)] for o in objects]

    return cached


def load(name: str, model: str | None, device: str, dtype: str, verdict: bool = False) -> GenEval:
    """`geneval` (DETECTOR + CLIP ViT-L/14), `geneval:tiny` (tiny random detector and CLIP), `geneval:DETECTOR`;
    `verdict`: score 1/0 by upstream's verdict (the `geneval-verdict` scorer, what the benchmark averages)."""
    return GenEval(name, model, device, dtype, verdict=verdict)
