"""Preference pairs and the reward model trained on them: `selfplay train-rm PAIRS.jsonl OUT [key=value ...]`.

A pair file is JSONL, one `{prompt, chosen, rejected}` object per line. `prompt` is a string or a list of chat
turns; `chosen` and `rejected` are the two answers, as strings. A run's own pairs.jsonl (AI preferences from
the judge, the constitution or SPIN) has those fields and reads as it is. Other fields (`who`, `when`, scores,
ids) are kept out of training. A line that is not a pair is refused, naming the file, the line and the field.

The reward model starts from `model.path` (the embedded model by default) and trains with `train.*`. A seeded
share of the pairs (`heldout`, 10% by default) is kept out of training and scored afterwards. Its accuracy, the
share where the chosen answer gets the higher reward, goes into OUT/rm_eval.json with the training figures.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay.config import RunConfig
from selfplay.errors import UserError
from selfplay.files import atomic_write_json, iter_jsonl
from selfplay.filters.human import combine
from selfplay.models import placement, resolve_model_path
from selfplay.records import Message, Problem

EVAL_FILE = "rm_eval.json"


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[Message]
    chosen: str
    rejected: str
    line: int


def _turns(value: Any, where: str) -> list[Message]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise UserError(f"{where}: 'prompt' must be a non-empty string or a list of {{role, content}} turns")


def read_pairs(path: Path) -> list[PreferencePair]:
    """Every pair in a JSONL file; the first line that is not one is an error naming the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: preference file not found")
    pairs = []
    for n, row in iter_jsonl(path):
        where = f"{path}: line {n}"
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise UserError(f"{where}: missing field {', '.join(repr(k) for k in missing)} (a pair is "
                            "{prompt, chosen, rejected})")
        # A run's pairs.jsonl keeps a multi-turn prompt in `messages`, and its `prompt` as text.
        prompt = _turns(row["messages"] if isinstance(row.get("messages"), list) else row["prompt"], where)
        for key in ("chosen", "rejected"):
            if not isinstance(row[key], str) or not row[key].strip():
                raise UserError(f"{where}: '{key}' must be a non-empty string")
        if row["chosen"] == row["rejected"]:
            raise UserError(f"{where}: 'chosen' and 'rejected' are the same text, which teaches nothing")
        pairs.append(PreferencePair(prompt, row["chosen"], row["rejected"], n))
    if not pairs:
        raise UserError(f"{path}: no preference pairs")
    return pairs


def split_pairs(pairs: list[PreferencePair], heldout: float, seed: int) -> tuple[list[PreferencePair],
                                                                                 list[PreferencePair]]:
    """A seeded split: (train, held out). At least one pair is held out when there are two or more."""
    if not 0.0 <= heldout < 1.0:
        raise UserError(f"--heldout: {heldout} must be at least 0 and below 1")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    k = min(len(pairs) - 1, max(1 if heldout > 0 and len(pairs) > 1 else 0, round(heldout * len(pairs))))
    held = sorted(order[:k])
    keep = set(held)
    return [p for i, p in enumerate(pairs) if i not in keep], [pairs[i] for i in held]


def heldout_accuracy(model_dir: Path, pairs: list[PreferencePair]) -> dict[str, Any]:
    """The share of pairs whose chosen answer the reward model at `model_dir` scores above the rejected one."""
    from selfplay.verifiers.reward_model import RewardModelVerifier

    if not pairs:
        return {"heldout_pairs": 0, "accuracy": None}
    rm = RewardModelVerifier(str(model_dir))
    problems = [Problem(f"pair-{p.line}", "", "", messages=p.prompt) for p in pairs]
    chosen = rm.scores([(q, p.chosen) for q, p in zip(problems, pairs, strict=True)])
    rejected = rm.scores([(q, p.rejected) for q, p in zip(problems, pairs, strict=True)])
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {"heldout_pairs": len(pairs), "accuracy": sum(m > 0 for m in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins)}


def same_pair(p: PreferencePair) -> tuple[str, frozenset[str]]:
    """The prompt (as turns) and the two answers, in either order: what a person's pair and an AI's share."""
    return repr(p.prompt), frozenset((p.chosen.strip(), p.rejected.strip()))


def train_rm(pairs_path: Path, out: Path, cfg: RunConfig, heldout: float = 0.1, max_length: int = 1024,
             force: bool = False, human_path: Path | None = None, human_weight: int = 2) -> dict[str, Any]:
    """Train a reward model on a pair file into `out`; return (and write to out/rm_eval.json) its figures.

    With `human_path` (a run's human-preferences.jsonl), people's pairs join the AI's by `filters.human`'s rule:
    a person's order replaces the AI's on the same two answers, and a person's pair counts `human_weight` times.
    A killed training resumes from its last checkpoint (in OUT.trainer/) when run again with the same arguments.
    """
    out, pairs_path = Path(out), Path(pairs_path)
    if (out / "config.json").is_file() and not force:
        raise UserError(f"{out}: a model is already there; pass --force to replace it")
    if human_weight < 1:
        raise UserError(f"--human-weight: {human_weight} must be 1 or more")
    pairs = read_pairs(pairs_path)
    extra: dict[str, Any] = {"pairs_file": str(pairs_path.resolve())}
    weights = None
    if human_path is not None:
        human = read_pairs(Path(human_path))
        pairs, people, dropped = combine(pairs, human, same_pair)
        weights = [human_weight if h else 1 for h in people]
        extra.update(human_file=str(Path(human_path).resolve()), human_pairs=len(human), human_weight=human_weight,
                     ai_pairs_replaced_by_people=dropped)
    if force and (out / "config.json").is_file():
        shutil.rmtree(out)
    return train_on_pairs(pairs, out, cfg, resolve_model_path(cfg.model.path), heldout, max_length, extra,
                          where=str(pairs_path), weights=weights)


def train_on_pairs(pairs: list[PreferencePair], out: Path, cfg: RunConfig, base: Path, heldout: float = 0.1,
                   max_length: int = 1024, extra: dict[str, Any] | None = None, where: str = "pairs",
                   weights: list[int] | None = None) -> dict[str, Any]:
    """Hold out a seeded share, train on the rest from `base` into `out`, score the held-out pairs, write the
    figures to out/rm_eval.json and return them. A pair of weight w is trained on w times; the split is made
    first, so no copy of a held-out pair is trained on."""
    from selfplay.training.reward_model import train_reward_model

    weight_of = {id(p): w for p, w in zip(pairs, weights, strict=True)} if weights is not None else {}
    train, held = split_pairs(pairs, heldout, cfg.seed)
    if not train:
        raise UserError(f"{where}: {len(pairs)} pair(s) leave none to train on after holding out {heldout:.0%}")
    if weights is not None:
        train = [p for p in train for _ in range(weight_of[id(p)])]
    start = time.perf_counter()
    print(f"train-rm: {len(train)} pairs to train on, {len(held)} held out, from {base}", flush=True)
    stats = train_reward_model(base, [(p.prompt, p.chosen, p.rejected) for p in train], out,
                               out.with_name(out.name + ".trainer"), cfg.train,
                               placement(cfg.model.device, cfg.model.dtype), cfg.seed, max_length)
    figures = {**(extra or {}), "base_model": str(base), "pairs": len(pairs), "trained_rows": len(train),
               **heldout_accuracy(out, held),
               "train": stats, "seconds": time.perf_counter() - start}
    atomic_write_json(out / EVAL_FILE, figures)
    return figures
