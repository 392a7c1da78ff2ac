"""Blind human evaluation checkpoints (`review.human_eval: N`): people compare two models' answers without knowing
which is which, and their win rate goes into eval.json beside the gold figures and the judge's.

Every Nth iteration the eval stage picks `review.human_eval_size` held-out prompts (seeded) where this iteration's
greedy answer differs from the reference's (iteration 0's, or the best iteration's so far with
`human_eval_against: best`). Each pair is shown in a random order and waits for a verdict: left, right or tie.

Files in the iteration folder:
    human_eval.request.json   the pairs as shown: prompt, left answer, right answer (nothing says which is new)
    human_eval.key.json       which side is the new model's, per pair (the web app never reads or serves it)
    human_eval.votes/ID.json  one person's verdict on pair ID, created once: the first verdict stands

The waiting run polls for the votes, so they can come from `selfplay serve` on another machine's browser; a run
killed while waiting comes back to the same pairs. When every pair has a verdict the eval stage goes on: the
win rate (a tie counts half) with its 95% Wilson interval, a note or an alarm where gold, the judge and the
people disagree, and one {prompt, chosen, rejected, who, when} row per decided pair in the run's
human-preferences.jsonl (ties make no row).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.files import atomic_write_json, atomic_write_jsonl, create_json_once, read_json
from selfplay.guards.heldout import wilson_interval
from selfplay.guards.win_rate import win_rate
from selfplay.loop import review
from selfplay.loop.rundir import RunDir
from selfplay.records import Problem, Sample
from selfplay.results import GuardResult

REQUEST, KEY, VOTES = "human_eval.request.json", "human_eval.key.json", "human_eval.votes"
PREFERENCES = "human-preferences.jsonl"  # in the run folder: every person's preference so far, rebuilt, never appended
CHOICES = ("left", "right", "tie")
MAX_NOTE = 2000
_PAIR_ID = re.compile(r"h\d{3,}")


def due(every: int, i: int) -> bool:
    return bool(every) and i > 0 and i % every == 0


def build(i: int, against: int, problems: Sequence[Problem], new: Sequence[Sample], old: Sequence[Sample],
          size: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request (what people see) and the key (which side is new) for `size` prompts whose answers differ."""
    by_problem = {p.id: p for p in problems}
    old_by = {s.problem_id: s for s in old}
    differ = [s for s in new if s.problem_id in old_by and s.problem_id in by_problem
              and s.completion.strip() != old_by[s.problem_id].completion.strip()]
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(differ)), min(size, len(differ))))
    pairs, key = [], {}
    for n, idx in enumerate(chosen):
        s = differ[idx]
        o = old_by[s.problem_id]
        new_left = rng.random() < 0.5
        pid = f"h{n:03d}"
        problem = by_problem[s.problem_id]
        # The prompt as the model saw it (instructions, answer format): people judge what was asked, and a
        # preference row made from it matches the same prompt's AI pairs.
        pairs.append({"id": pid, "problem_id": s.problem_id, "prompt": problem.prompt, "messages": problem.messages,
                      "left": s.completion if new_left else o.completion,
                      "right": o.completion if new_left else s.completion})
        key[pid] = {"new": "left" if new_left else "right", "new_sample": s.id, "old_sample": o.id}
    request = {"iteration": i, "against": against, "pairs": pairs,
               "same_answers": len([s for s in new if s.problem_id in old_by]) - len(differ)}
    return request, {"iteration": i, "against": against, "pairs": key}


def votes(it_dir: Path) -> dict[str, dict[str, Any]]:
    """The verdicts given so far, by pair id."""
    folder = it_dir / VOTES
    return {p.stem: read_json(p) for p in sorted(folder.glob("h*.json"))} if folder.is_dir() else {}


def waiting(run_path: Path) -> Path | None:
    """The iteration folder whose blind evaluation still lacks verdicts, if any."""
    for d in reversed(RunDir(run_path).iter_dirs()):
        if (d / REQUEST).is_file() and not (d / "eval.json").is_file():
            request = read_json(d / REQUEST)
            if len(votes(d)) < len(request["pairs"]):
                return d
    return None


def vote(it_dir: Path, pair_id: str, choice: str, who: str, note: str = "") -> str:
    """Record one person's verdict on one pair; a pair already decided keeps its first verdict (UserError)."""
    if not (it_dir / REQUEST).is_file():
        raise UserError(f"{it_dir.name}: no blind evaluation was asked for here")
    if not _PAIR_ID.fullmatch(pair_id) or pair_id not in {p["id"] for p in read_json(it_dir / REQUEST)["pairs"]}:
        raise UserError(f"{it_dir.name}: no pair {pair_id!r} in this blind evaluation")
    if choice not in CHOICES:
        raise UserError(f"choice: {choice!r} is not one of {', '.join(CHOICES)}")
    who = review.person(who) or "anonymous"
    (it_dir / VOTES).mkdir(exist_ok=True)
    record = {"choice": choice, "note": str(note)[:MAX_NOTE], "who": who, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if not create_json_once(it_dir / VOTES / f"{pair_id}.json", record):
        first = read_json(it_dir / VOTES / f"{pair_id}.json")
        raise UserError(f"{it_dir.name}: pair {pair_id} was already judged ({first['choice']}, by {first['who']}); "
                        "the first verdict stands")
    return f"{it_dir.name}: pair {pair_id}: {choice}"


def outcomes(it_dir: Path) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
    """(pair, outcome, vote) per decided pair; the outcome is 'a' when the new answer won, 'b' when it lost."""
    request, key, given = read_json(it_dir / REQUEST), read_json(it_dir / KEY)["pairs"], votes(it_dir)
    out = []
    for pair in request["pairs"]:
        v = given.get(pair["id"])
        if v is None:
            continue
        result = "tie" if v["choice"] == "tie" else "a" if v["choice"] == key[pair["id"]]["new"] else "b"
        out.append((pair, result, v))
    return out


def checkpoint(rundir: RunDir, i: int, against: int, problems: Sequence[Problem], new: Sequence[Sample],
               old: Sequence[Sample], size: int, seed: int, poll_seconds: float,
               before_wait: Callable[[], None] = lambda: None) -> GuardResult:
    """Write the pairs if needed, wait for a verdict on each, and return the human win rate as a guard result.

    `against` is used for a new request only: a resumed wait keeps the reference its pairs were drawn from.
    `before_wait` runs once if the run must wait (the driver frees its models: people may take hours). The
    figures say how long it waited (`waited_seconds`), which is not compute.
    """
    it_dir = rundir.iter_dir(i)
    if not (it_dir / REQUEST).is_file():
        request, key = build(i, against, problems, new, old, size, seed)
        atomic_write_json(it_dir / KEY, key)  # the key first: a request on disk always has its key
        atomic_write_json(it_dir / REQUEST, request)
    request = read_json(it_dir / REQUEST)
    against, total = request["against"], len(request["pairs"])
    if not total:
        return GuardResult("n/a", notes=[f"no blind evaluation: this iteration's answers equal iteration {against}'s "
                                         "on every held-out prompt"], figures={"against": against, "compared": 0})
    start = time.perf_counter()
    if len(votes(it_dir)) < total:
        before_wait()
        rundir.write_state(status="waiting for human evaluation", iteration=i, stage="eval")
        print(f"\n{it_dir.name}: waiting for a blind human evaluation of {total} pair(s) (this iteration against "
              f"iteration {against}).\n  open:  selfplay serve {rundir.path.parent}\nThis process waits; Ctrl-C is "
              "safe, and `selfplay resume` comes back to this point.", flush=True)
        while len(votes(it_dir)) < total:
            time.sleep(poll_seconds)
        rundir.write_state(status="running")
    decided = outcomes(it_dir)
    results = [o for _, o, _ in decided]
    wins = sum(o == "a" for o in results) + 0.5 * sum(o == "tie" for o in results)
    lo, hi = wilson_interval(wins, len(results))  # type: ignore[arg-type]  # a tie counts half a win
    write_preferences(rundir)
    return GuardResult("ok", figures={
        "against": against, "compared": len(results), "wins": sum(o == "a" for o in results),
        "losses": sum(o == "b" for o in results), "ties": sum(o == "tie" for o in results),
        "win_rate": win_rate(results), "ci95": [lo, hi], "same_answers": request.get("same_answers", 0),
        "who": sorted({v["who"] for _, _, v in decided}), "waited_seconds": time.perf_counter() - start,
    })


def preference_rows(rundir: RunDir) -> list[dict[str, Any]]:
    """Every decided, untied blind pair of the run as {prompt, chosen, rejected, who, when, ...}, oldest first."""
    rows = []
    for d in rundir.iter_dirs():
        if not (d / KEY).is_file() or not (d / REQUEST).is_file():
            continue
        key = read_json(d / KEY)["pairs"]
        for pair, result, v in outcomes(d):
            if result == "tie":
                continue
            new_side = key[pair["id"]]["new"]
            new, old = pair[new_side], pair["right" if new_side == "left" else "left"]
            chosen, rejected = (new, old) if result == "a" else (old, new)
            row = {"prompt": pair["prompt"], "chosen": chosen, "rejected": rejected, "who": v["who"],
                   "when": v["when"], "note": v.get("note", ""), "source": "blind_eval", "split": "heldout",
                   "problem_id": pair["problem_id"], "iteration": RunDir.iteration_of(d), "pair": pair["id"]}
            if pair.get("messages"):
                row["messages"] = pair["messages"]
            rows.append(row)
    return rows


def write_preferences(rundir: RunDir) -> int:
    """Rebuild the run's human-preferences.jsonl from the blind votes and the review decisions: never a row twice."""
    rows = [*preference_rows(rundir), *review.preference_rows(rundir)]
    rows.sort(key=lambda r: (r["when"], r["iteration"], r.get("pair", r.get("id", ""))))
    return atomic_write_jsonl(rundir.path / PREFERENCES, rows)


def direction(lo: float, hi: float, middle: float) -> str:
    """better or worse only when the 95% interval leaves `middle` out; else inconclusive."""
    return "better" if lo > middle else "worse" if hi < middle else "inconclusive"


def disagreement(human: GuardResult, gold: tuple[float, float, float] | None,
                 judge: tuple[float, int] | None) -> GuardResult:
    """Mark where gold, the judge and the people point different ways, each by its 95% interval.

    `gold`: this iteration's held-out accuracy interval and the reference's accuracy; `judge`: the judge's win
    rate and its comparisons. A direction counts only when its interval leaves no change out; people saying
    worse while a machine says better is an alarm (the automatic figures may be rewarding what people do not
    want), any other split a note. An inconclusive side disagrees with nothing.
    """
    rate, (lo, hi) = human.get("win_rate"), human.get("ci95") or (0.0, 1.0)
    if rate is None:
        return human
    people = direction(lo, hi, 0.5)
    machines = {}
    if gold is not None:
        machines["gold"] = direction(gold[0], gold[1], gold[2])
    if judge is not None and judge[1]:
        machines["judge"] = direction(*wilson_interval(judge[0] * judge[1], judge[1]), 0.5)  # type: ignore[arg-type]
    human.figures["directions"] = {"people": people, **machines}
    against = human.get("against")
    for name, says in machines.items():
        if says == people or "inconclusive" in (says, people):
            continue
        line = (f"people prefer this iteration's answers {rate:.0%} of the time (95% interval {lo:.0%}-{hi:.0%}, "
                f"{human.get('compared')} pairs) against iteration {against}, but {name} says {says}")
        if people == "worse" and says == "better":
            human.alarms.append(line + ": the automatic figures may reward what people do not want (reward hacking)")
            human.status = "alarm"
        else:
            human.notes.append(line)
            if human.status == "ok":
                human.status = "note"
    return human
