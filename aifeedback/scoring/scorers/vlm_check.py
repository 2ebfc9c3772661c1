"""The checks a VLM judge's spec gets before any model loads or image is made (light: no torch). Every stage's
preflight runs them through `preflight.check_scorers`; the local judge runs them again before loading weights."""

from __future__ import annotations

import json
from pathlib import Path

from aifeedback.errors import AifError
from aifeedback.scoring.scorers.vlm_judges import JUDGES, VLM_TYPES
from aifeedback.scoring.scorers.vlm_served import ServedJudge, is_url


def check_vlm(spec: str, name: str, model: str | None) -> None:
    """A VLM judge's server answers its model list and one test question with log-probabilities (a URL), or its
    local checkpoint is a Qwen2.5-VL (a folder or a cached hub id whose config.json can be read; other hub ids are
    left to the load, which names the fix)."""
    if is_url(model):
        ServedJudge(spec, name, model).preflight()
        return
    if model == "tiny":
        return
    where = model or JUDGES[name].model
    config = Path(where).expanduser() / "config.json"
    if not config.exists() and not where.startswith((".", "/", "~")) and where.count("/") == 1:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(where, "config.json")
        config = Path(cached) if isinstance(cached, str) else config
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    if model_type not in VLM_TYPES:
        raise AifError(f"scorer '{spec}': {where} is a '{model_type}' model, not a vision-language model this judge "
                       f"runs ({', '.join(VLM_TYPES)}). Fix: give a Qwen2.5-VL checkpoint (e.g. {JUDGES[name].model}), "
                       f"or serve another VLM with vLLM/SGLang and give its URL ({name}:http://HOST:PORT/v1).")
