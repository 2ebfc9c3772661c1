"""Reward models ("scorers"), listable by name: `load_scorer("pickscore")`, `load_scorer("hpsv2:v2.1")`.

A spec is `NAME` or `NAME:MODEL`; MODEL is a hub id, a local path, a version (`hpsv2:v2.1`), `tiny` (a tiny random
model of the same architecture, built offline, for tests) or, for `color`, a colour (`color:orange`).
Every scorer returns one float per (image, prompt), higher = better. Heavy imports happen inside the loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from aifeedback.errors import AifError, first_line
from aifeedback.registry import Registry, UnknownNameError
from aifeedback.scoring.scorers.base import Scorer

__all__ = ["Scorer", "UnknownScorerError", "is_pairwise", "list_scorers", "load_scorer", "parse_spec", "model_error"]


class UnknownScorerError(UnknownNameError):
    """A scorer name that is not registered."""


class ScorerLoadError(AifError):
    """A scorer's weights could not be loaded (not cached, hub unreachable, bad path)."""


def _pickscore(name, model, device, dtype):
    from aifeedback.scoring.scorers.pickscore import PickScore

    return PickScore(name, model, device, dtype)


def _clip(name, model, device, dtype):
    from aifeedback.scoring.scorers import clip

    return clip.load(name, model, device, dtype)


def _hpsv2(name, model, device, dtype):
    from aifeedback.scoring.scorers import hpsv2

    return hpsv2.load(name, model, device, dtype)


def _aesthetic(name, model, device, dtype):
    from aifeedback.scoring.scorers.aesthetic import Aesthetic

    return Aesthetic(name, model, device, dtype)


def _imagereward(name, model, device, dtype):
    from aifeedback.scoring.scorers.imagereward import ImageReward

    return ImageReward(name, model, device, dtype)


def _hpsv3(name, model, device, dtype):
    from aifeedback.scoring.scorers.hpsv3 import HPSv3

    return HPSv3(name, model, device, dtype)


def _geneval(verdict: bool):
    def load(name, model, device, dtype):
        from aifeedback.scoring.scorers import geneval

        return geneval.load(name, model, device, dtype, verdict)

    return load


def _toy_fidelity(name, model, device, dtype):
    from aifeedback.scoring.scorers.toy import ToyFidelity

    return ToyFidelity(name, model)


def _vlm(judge: str):
    def load(name, model, device, dtype):
        from aifeedback.scoring.scorers.vlm_served import ServedJudge, is_url

        if is_url(model):
            return ServedJudge(name, judge, model)
        from aifeedback.scoring.scorers.vlm import LocalJudge

        return LocalJudge(name, judge, model, device, dtype)

    return load


def _stat(kind: str):
    def load(name, model, device, dtype):
        from aifeedback.scoring.scorers.stats import ImageStat

        return ImageStat(name, kind, model)

    return load


@dataclass(frozen=True)
class ScorerKind:
    """A registered scorer: `load(spec, model, device, dtype)` imports its implementation and builds it."""

    name: str
    help: str
    load: Callable[..., Scorer]


SCORERS: Registry[ScorerKind] = Registry("scorer", [
    ScorerKind("pickscore", "PickScore: CLIPModel yuvalkirstain/PickScore_v1 + laion/CLIP-ViT-H-14-laion2B-s32B-b79K "
               "processor; logit_scale*cos", _pickscore),
    ScorerKind("hpsv2", "HPS v2.0 (hpsv2:v2.1 for v2.1): open_clip ViT-H-14 + xswu/HPSv2 checkpoint; cosine, pad "
               "preprocessing", _hpsv2),
    ScorerKind("clip", "CLIP score: open_clip ViT-H-14 laion2b_s32b_b79k; cosine, pad preprocessing", _clip),
    ScorerKind("aesthetic", "LAION aesthetic predictor v2: OpenAI CLIP ViT-L/14 + shipped MLP head; 1-10, prompt "
               "ignored", _aesthetic),
    ScorerKind("imagereward", "ImageReward v1.0: THUDM/ImageReward ImageReward.pt (BLIP ViT-L/16 + BERT "
               "cross-attention + MLP); normalised reward", _imagereward),
    ScorerKind("hpsv3", "HPSv3: Qwen2-VL-7B-Instruct + reward head, HPSv3.safetensors from MizzenAI/HPSv3; mu of "
               "(mu, sigma) at the <|Reward|> token", _hpsv3),
    ScorerKind("vlm", "VLM judge, P(Yes) to 'Does this image show \"PROMPT\"?': local Qwen/Qwen2.5-VL-7B-Instruct, "
               "vlm:HUB_ID|PATH|tiny, or served: vlm:http://HOST:PORT/v1 (vLLM/SGLang)", _vlm("vlm")),
    ScorerKind("vlm-quality", "VLM judge, P(Yes) to 'Is this a high-quality image?' (prompt ignored); models as vlm",
               _vlm("vlm-quality")),
    ScorerKind("unifiedreward", "UnifiedReward's pointwise question (alignment + quality), expected 1-5 rating from "
               "the answer's log-probabilities: local CodeGoat24/UnifiedReward-qwen-7b, or models as vlm",
               _vlm("unifiedreward")),
    ScorerKind("vlm-pairwise", "pairwise VLM judge: two images of a prompt, P('1') of 'which shows \"PROMPT\" better, "
               "1 or 2?', both orders averaged; labels pairs in aif score, win rates in aif eval; models as vlm",
               _vlm("vlm-pairwise")),
    ScorerKind("unifiedreward-pairwise", "UnifiedReward's pair-ranking question (alignment + quality), P(first better) "
               "from the answer '1'/'2', both orders averaged; models as unifiedreward",
               _vlm("unifiedreward-pairwise")),
    ScorerKind("geneval", "GenEval rules (objects, counts, colours, positions) for GenEval's own prompts: Mask2Former "
               "Swin-S COCO (transformers) + CLIP ViT-L/14 colours; Flow-GRPO's partial credit", _geneval(False)),
    ScorerKind("geneval-verdict", "the same, scored 1 if the image passes GenEval's upstream verdict, else 0 (what "
               "the GenEval benchmark averages)", _geneval(True)),
    ScorerKind("redness", "mean R - mean(G,B) of the image in [0,1] (toy reward, no model)", _stat("redness")),
    ScorerKind("brightness", "mean Rec.601 luma in [0,1] (no model)", _stat("brightness")),
    ScorerKind("saturation", "mean HSV saturation in [0,1] (no model)", _stat("saturation")),
    ScorerKind("color", "color:NAME, closeness of the pixels to a CSS colour or #rrggbb in [0,1] (no model)",
               _stat("color")),
    ScorerKind("toy-fidelity", "1 if a toy image's disc and background colours are the caption's, else 0 (no model)",
               _toy_fidelity),
])


def list_scorers() -> dict[str, str]:
    """Registered scorer names -> one-line description."""
    return SCORERS.describe()


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'NAME' or 'NAME:MODEL' -> (name, model or None); raises UnknownScorerError listing the valid names."""
    name, _, model = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in SCORERS:
        raise UnknownScorerError(
            f"{SCORERS.unknown(name)} (as NAME or NAME:MODEL, e.g. pickscore:tiny, hpsv2:v2.1, color:red; "
            "`aif models` describes them)."
        )
    return name, (model.strip() or None)


def is_pairwise(spec: str) -> bool:
    """Whether the spec names a pairwise judge (it compares two images of a prompt instead of scoring one)."""
    from aifeedback.scoring.scorers.vlm_judges import JUDGES

    name = spec.strip().partition(":")[0].strip().lower()  # a misspelt name is parse_spec's to report
    return name in JUDGES and JUDGES[name].pairwise


def load_scorer(spec: str, device: str = "cpu", dtype: str = "float32") -> Scorer:
    """Load a scorer by spec (`pickscore`, `pickscore:tiny`, `hpsv2:v2.1`, `clip:/path`, `color:red`, ...)."""
    name, model = parse_spec(spec)
    return SCORERS[name].load(spec.strip(), model, device, dtype)


# what to do about a scorer checkpoint that storage.torch_files refuses (it would unpickle code) or finds damaged
SCORER_FIX = ("use the file as its authors publish it (the scorer's hub repository), or save its weights as a plain "
              "state dict of tensors")


def model_error(spec: str, what: str, err: Exception) -> ScorerLoadError:
    """A friendly error for weights that could not be loaded."""
    first = first_line(err)
    return ScorerLoadError(
        f"scorer '{spec}': could not load '{what}' (not a local path, not in the Hugging Face cache, and the hub "
        f"could not be reached or has no such file).\n"
        f"  Fix: download it where there is network access and point HF_HOME at that cache, pass a local path as "
        f"NAME:PATH, or use NAME:tiny for an offline test model.\n  Details: {first}"
    )
