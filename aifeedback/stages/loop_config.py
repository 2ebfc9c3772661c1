"""`aif loop`'s settings: `LoopConfig`, one documented field per option (read by the command line and recipes).

Light on purpose (no torch): `aif --help` and recipe checks import it; the stage itself is `stages/loop.py`.
The defaults run in the toy world on a CPU (about 40 s of CPU time for the 3 rounds), like `aif demo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aifeedback.config import input_paths, option, side_problems
from aifeedback.losses import LOSSES
from aifeedback.stages.reward_options import RewardServerOptions
from aifeedback.stages.train_config import TrainConfig

TOY = "toy"  # --prompts / --eval-prompts: captions of the toy world, written to OUT/prompts/


@dataclass
class LoopConfig(RewardServerOptions):
    out: str = option("runs/loop", "output folder: round-NN/ (generate, score, train, export, eval), report.json/.html",
                      identity=False)
    rounds: int = option(3, "rounds of generate -> score -> train -> export -> eval; raising it on a finished loop "
                            "runs the extra rounds", min=1, identity=False)
    model: str = option("toy-sd15", "base model (round 1 samples from it; every eval compares against it)", path=True)
    prompts: str = option(TOY, "training prompts: toy (--toy-prompts toy captions) or any source `aif generate` "
                               "reads", path=True)
    eval_prompts: str = option(TOY, "held-out prompts for each round's eval: toy (toy captions disjoint from the "
                                    "training ones) or any source `aif eval` reads", path=True)
    toy_prompts: int = option(32, "training captions when --prompts toy", min=2)
    toy_eval_prompts: int = option(32, "held-out captions when --eval-prompts toy", min=1)
    images_per_prompt: int = option(4, "candidates per prompt and round (K), drawn from the current policy", min=2)
    scorer: str = option("redness", "the reward that labels the pairs, NAME or NAME:MODEL (see `aif models`)")
    pairing: Literal["best-worst", "all", "adjacent", "random"] = option("best-worst", "which candidates of a prompt "
                                                                                       "become pairs (aif score)")
    fidelity: Optional[str] = option("toy-fidelity", "scorer reported as prompt fidelity in each eval (toy-fidelity "
                                                     "in the toy world, e.g. clip on real models); null: none")
    # base by default: the KL anchor of DPO stays the model the evals compare against, which held prompt fidelity
    # better per unit of reward in the toy world than re-anchoring each round (README, "Online AI feedback")
    reference: Literal["base", "previous"] = option(
        "base", "DPO reference of round r: base = the base model (one training run continued across rounds); "
        "previous = the policy it starts from (round r-1's exported model, a fresh run on it: iterative DPO)")
    train_steps: int = option(80, "optimizer steps per round", min=1)
    batch_size: int = option(16, "pairs per optimizer step", min=1)
    beta: float = option(2000.0, "DPO beta (with the paper's 0.5 factor; 2000 as for SD1.5)", min=0.0)
    lr: float = option(5e-5, "AdamW learning rate (no weight decay, warmup or clipping, as in `aif demo`)", min=0.0)
    loss: Literal[LOSSES.names()] = option("dpo", "training objective; " + "; ".join(f"{k}: {v.help}"
                                                                                    for k, v in LOSSES.items()))
    lora_rank: int = option(0, "LoRA rank; 0 = full fine-tune (each round's model is exported as a whole pipeline "
                               "either way)", min=0)
    sampling_steps: int = option(10, "denoising steps of every generated image", min=1)
    guidance: float = option(1.0, "classifier-free guidance of every generated image (1 = off)", min=0.0)
    dtype: Literal["float32", "float16", "bfloat16"] = option("float32", "dtype of every generated image (the toy "
                                                                          "model costs nothing in float32)")
    image_batch_size: int = option(64, "images rendered per pipeline call (64 suits the toy model; lower it for "
                                       "real models)", min=1, identity=False)
    resolution: Optional[int] = option(None, "training resolution; null = the size of the round's generated images",
                                       min=8)
    eval_seeds: int = option(4, "eval images per held-out prompt and model (base and tuned twins share a seed)",
                             min=1)
    seed: int = option(0, "seed of the prompt split, the image seeds (round r draws with seed + r - 1) and training",
                       min=0)
    overwrite: bool = option(False, "replace a different loop's results in --out", identity=False)
    progress: bool = option(True, "show progress bars (in a log: a plain line every 30 s)", identity=False)

    def validate(self) -> list[str]:
        from aifeedback.zoo.toy_world import all_captions

        problems = side_problems(self, "resolution") + self.reward_problems([self.scorer], "--scorer")
        if LOSSES[self.loss].unpaired:  # e.g. kto: it trains on scored single images, not pairs
            problems.append(f"loss: {self.loss} trains on unpaired images; the loop trains on pairs, so choose a "
                            f"paired loss ({', '.join(k for k, v in LOSSES.items() if not v.unpaired)})")
        else:  # what aif train would refuse in round 1 (e.g. mapo with a DPO-scale beta), refused before any image
            train = TrainConfig(loss=self.loss, beta=self.beta, lr=self.lr, lora_rank=self.lora_rank,
                                max_steps=self.train_steps, warmup_steps=0)
            problems += [f"{p} (round 1's aif train)" for p in train.validate()]
        n = len(all_captions())
        wanted = self.toy_prompts * (self.prompts == TOY) + self.toy_eval_prompts * (self.eval_prompts == TOY)
        if wanted > n:
            problems.append(f"toy_prompts + toy_eval_prompts ({wanted}) exceeds the toy world's {n} distinct "
                            "captions; lower one of them")
        return problems

    def preflight(self) -> None:
        """Fail fast, before torch is imported: the base model, the scorers and the prompt sources."""
        from aifeedback.data.prompts import source_kind
        from aifeedback.families.resolve import check_available
        from aifeedback.preflight import check_apart, check_scorers

        check_available(self.model, "base model")
        check_scorers(self.served([self.scorer], "--scorer") + ([self.fidelity] if self.fidelity else []))
        for source in (self.prompts, self.eval_prompts):
            if source != TOY:
                source_kind(source)
        check_apart(self.out, input_paths(self))  # the inputs exist: an --out over one would clobber it
