"""`aif export`'s settings: `ExportConfig`, one documented field per option (read by the command line and recipes).

Light on purpose (no torch): `aif --help` and recipe checks import it; the stage itself is `stages/export.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import yaml

from aifeedback.config import input_paths, option
from aifeedback.errors import AifError


@dataclass
class ExportConfig:
    checkpoint: str = option("", "a checkpoint folder (RUN/checkpoints/checkpoint-NNNNNN) or a run folder (-> its "
                                 "latest)", positional=True, path=True)
    out: str = option("export", "output folder")
    pipeline: bool = option(False, "write a whole diffusers pipeline folder (base model + tuned denoiser, LoRA fused)")
    model: Optional[str] = option(None, "base model for --pipeline; null = the model recorded in the run's config.yaml",
                                  path=True)
    ema: bool = option(True, "when the checkpoint holds a moving average of the weights (trained with --ema-decay: "
                             "CHECKPOINT/ema/), export it as the final model; --no-ema exports the trained weights")
    dtype: Literal["float32", "float16", "bfloat16"] = option("float32", "dtype of the written weights")
    overwrite: bool = option(False, "replace an existing --out folder")
    format: Literal["diffusers", "kohya"] = option("diffusers", "LoRA key format: diffusers (load_lora_weights) or "
                                                                 "kohya (ComfyUI, A1111; diffusers reads it too)")
    eval: Optional[str] = option(None, "an `aif eval` output of this run: its win rates go into the model card",
                                 path=True, identity=False)
    push_to_hub: Optional[str] = option(None, "after exporting, upload the folder to this hub model repo (user/name; "
                                              "token from `hf auth login`)", identity=False)
    hub_public: bool = option(False, "make the --push-to-hub repo public (default: private)", identity=False)
    progress: bool = option(True, "accepted for a uniform command line; export draws no progress bar", identity=False)

    def validate(self) -> list[str]:
        problems = [] if self.checkpoint else ["checkpoint: pass the checkpoint or run folder to export"]
        if self.format == "kohya" and self.pipeline:
            problems.append("format: kohya is a LoRA file format; drop --pipeline (or --format kohya)")
        if self.push_to_hub is not None:
            from aifeedback.sharing.hub import repo_id_problem

            problems += filter(None, [repo_id_problem(self.push_to_hub)])
        return problems

    def preflight(self) -> None:
        """Fail fast, before torch is imported: the checkpoint, --pipeline's base model, the --push-to-hub login."""
        from aifeedback.families.resolve import check_available, check_trained_for
        from aifeedback.preflight import check_apart
        from aifeedback.storage.checkpoints import checkpoint_kind, resolve_checkpoint

        ckpt = resolve_checkpoint(self.checkpoint)
        check_apart(self.out, input_paths(self))  # the inputs exist: an --out over one would clobber it
        check_replaceable_export(Path(self.out), self.overwrite)
        if self.format == "kohya" and checkpoint_kind(self.weights(ckpt)) != "lora":
            raise AifError(f"--format kohya needs a LoRA checkpoint; {ckpt} is a full fine-tune (export it as "
                           "diffusers)")
        if self.eval is not None and not (Path(self.eval) / "report.json").is_file():
            raise AifError(f"--eval {self.eval}: no report.json there; pass a finished `aif eval` output folder")
        if self.pipeline:
            check_available(self.base_model(ckpt), "base model")
            check_trained_for(self.base_model(ckpt), ckpt, f"checkpoint {ckpt}")
        if self.push_to_hub is not None:  # the login and the network, before the export's work
            from aifeedback.sharing.hub import check_hub_access

            check_hub_access(self.push_to_hub)

    def weights(self, ckpt: Path) -> Path:
        """The folder whose weights are exported: the checkpoint's ema/ (with --ema, when there) or the checkpoint."""
        from aifeedback.storage.checkpoints import EMA_DIR

        return ckpt / EMA_DIR if self.ema and (ckpt / EMA_DIR).is_dir() else ckpt

    def base_model(self, ckpt: Path) -> str:
        """--model, else the model recorded in the training run's config.yaml."""
        if self.model is not None:
            return self.model
        run_config = ckpt.parent.parent / "config.yaml"
        if not run_config.exists():
            raise AifError(f"--pipeline needs the base model: {run_config} is missing, so pass --model")
        return yaml.safe_load(run_config.read_text())["model"]


def check_replaceable_export(out: Path, overwrite: bool) -> None:
    """A non-empty --out is replaced only with --overwrite, and only when it is an aifeedback export (its model card,
    README.md, carries the `aifeedback` tag): --overwrite deletes the whole folder, so never one someone else wrote."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise AifError(f"{out} already exists and is not empty. Use another --out, or pass --overwrite")
    from aifeedback.sharing.cards import CARD, front_matter

    try:
        tags = front_matter((out / CARD).read_text()).get("tags") or []
    except (OSError, ValueError, AttributeError, yaml.YAMLError):  # no card, or not one of ours
        tags = []
    if "aifeedback" not in tags:
        raise AifError(f"--overwrite {out}: not an aifeedback export (no {CARD} model card tagged aifeedback), so it "
                       "is not deleted. Fix: use another --out, or empty that folder yourself.")
