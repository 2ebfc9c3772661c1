"""What `aif rl` writes of each epoch's samples: the rollouts (OUT/rollouts/data/train-NNNNN.parquet, every image with
its rewards and advantage), the held-out monitor rewards, the groups' diversity, and the best-vs-worst pair of every
group as training data for `aif train --data ai`.

Monitor rewards (`--monitor`) score the same images as the reward but never enter the advantages: a reward that
rises while they fall is reward hacking. Diversity is `evaluation.diversity`'s measure over each group (one
prompt's G images). The pairs: per group, the highest- and the lowest-rewarded image (`scoring.pairing`'s
best-worst pairing and tie rule, the combined reward as the score), written as OUT/pairs/data/train-NNNNN.parquet
(NNNNN = the epoch) with `aif score`'s pair columns, so `aif train --data ai --dataset OUT` trains on them offline
(`data.sources` reads an rl output's pairs/ folder). A rerun of an epoch rewrites its shard, never appends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from aifeedback.data.labels import RL_PAIRS_DIR
from aifeedback.data.prompts import prompt_id
from aifeedback.evaluation.diversity import diversity, pixels
from aifeedback.families.sampling import encode_image
from aifeedback.scoring.pairing import label, select_pairs
from aifeedback.stages.rl_rollout import Rollout
from aifeedback.storage.shards import write_shard

ROLLOUTS = "rollouts"  # OUT/rollouts/data/train-NNNNN.parquet: epoch NNNNN's samples (write_rollout)


def write_rollout(out: Path, epoch: int, rollout: Rollout, group_size: int) -> Path:
    """Epoch `epoch`'s samples as Parquet shard OUT/rollouts/data/train-NNNNN.parquet (NNNNN = the epoch): one row
    per image with generate's columns (prompt_id, prompt, k = its index in its group, image as PNG bytes, width,
    height), the epoch, the combined reward, the advantage, each reward's score (`reward_SPEC`) and each monitor
    reward's (`monitor_SPEC`); `datasets` reads the folder."""
    rows = []
    for i, (text, image) in enumerate(zip(rollout.prompts, rollout.images, strict=True)):
        rows.append({"epoch": epoch, "prompt_id": prompt_id(text), "prompt": text, "k": i % group_size,
                     "image": encode_image(image, "png"), "width": image.width, "height": image.height,
                     "reward": float(rollout.rewards[i]), "advantage": float(rollout.advantages[i]),
                     **{f"reward_{spec}": float(r[i]) for spec, r in rollout.raw.items()},
                     **{f"monitor_{spec}": float(m[i]) for spec, m in rollout.monitor.items()}})
    return write_shard(out / ROLLOUTS, epoch, rows)


def monitor_scores(scorers: dict[str, Any], images: list, prompts: list[str]) -> dict[str, list[float]]:
    """Each monitor scorer's scores of the epoch's images (aligned with prompts)."""
    return {spec: [float(v) for v in scorer.score(images, prompts)] for spec, scorer in scorers.items()}


def groups(n: int, group_size: int) -> list[range]:
    """The trajectory indices of each group: the epoch samples G consecutive images per prompt."""
    return [range(i, min(i + group_size, n)) for i in range(0, n, group_size)]


def group_diversity(images: list, group_size: int) -> float | None:
    """Mean over the groups of the mean RMS pixel distance between a group's images (evaluation.diversity)."""
    return diversity({str(g[0]): [pixels(images[i]) for i in g] for g in groups(len(images), group_size)})["mean"]


def epoch_extras(images: list, monitor: dict[str, Sequence[float]], group_size: int) -> dict[str, Any]:
    """The metrics.jsonl fields of the monitor rewards (their means) and the diversity."""
    return {**{f"monitor/{spec}": sum(v) / len(v) for spec, v in monitor.items()},
            "diversity": group_diversity(images, group_size)}


def pair_rows(epoch: int, prompts: list[str], images: list, rewards: Sequence[float], group_size: int,
              scorer: str) -> list[dict[str, Any]]:
    """One `aif score`-layout pair per group (best vs worst by the combined reward); a group whose rewards are all
    equal gives none."""
    rows = []
    for g in groups(len(prompts), group_size):
        for a, b in select_pairs([float(rewards[i]) for i in g], "best-worst"):
            i, j = g[a], g[b]
            labels = label(float(rewards[i]), float(rewards[j]), 0.0)
            if labels is None:
                continue
            rows.append({"caption": prompts[i], "jpg_0": encode_image(images[i], "png"),
                         "jpg_1": encode_image(images[j], "png"), "label_0": labels[0], "label_1": labels[1],
                         "prompt_id": prompt_id(prompts[i]), "score_0": float(rewards[i]),
                         "score_1": float(rewards[j]), "margin": abs(float(rewards[i]) - float(rewards[j])),
                         "scorer": scorer, "k_0": a, "k_1": b, "epoch": epoch})
    return rows


def write_pairs(out: Path, epoch: int, prompts: list[str], images: list, rewards: Sequence[float], group_size: int,
                scorer: str) -> Path:
    """Epoch `epoch`'s pairs as OUT/pairs/data/train-NNNNN.parquet (an empty shard when every group tied)."""
    import pyarrow as pa

    schema = pa.schema([("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
                        ("label_0", pa.float64()), ("label_1", pa.float64()), ("prompt_id", pa.string()),
                        ("score_0", pa.float64()), ("score_1", pa.float64()), ("margin", pa.float64()),
                        ("scorer", pa.string()), ("k_0", pa.int64()), ("k_1", pa.int64()), ("epoch", pa.int64())])
    rows = pair_rows(epoch, prompts, images, rewards, group_size, scorer)
    return write_shard(out / RL_PAIRS_DIR, epoch, rows, schema=schema)
