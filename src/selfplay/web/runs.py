"""What the web app shows of a run, read from its folder and never written: status, progress, figures, guards,
the waiting review and blind evaluation, and the lineage of one training example.

A run being written by another process is read the way `selfplay report` reads it: every file the app opens is
written atomically, so it sees a whole old version or a whole new one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfplay import progress
from selfplay.files import read_json, read_jsonl
from selfplay.loop import human_eval, review
from selfplay.loop.rundir import RunDir
from selfplay.results import GUARDS

STALE_SECONDS = 120  # a run whose progress has not moved for this long, with no process holding it, is not running


@dataclass
class RunView:
    name: str
    status: str
    recipe: str
    iteration: int | None
    iterations: int
    stage: str | None
    done: int | None = None
    total: int | None = None
    unit: str = ""
    updated: str = ""
    waiting_review: bool = False
    waiting_blind: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_percent(self) -> int:
        """How far the run is: finished iterations plus the running one's share, of the cap."""
        if self.status in ("finished", "stopped"):
            return 100
        finished = max(0, (self.iteration or 0) - (1 if self.stage else 0))
        part = (self.done / self.total) if self.done is not None and self.total else 0.0
        return int(100 * min(1.0, (finished + part / 2) / max(1, self.iterations)))

    @property
    def stage_percent(self) -> int | None:
        if self.done is None or not self.total:
            return None
        return int(100 * min(1.0, self.done / self.total))


def held(path: Path) -> bool:
    """Is a selfplay process working on the run? The lock file names its holder; a killed holder's pid is gone.

    The lock itself is not probed: taking it, even shared and for a moment, could make a starting run refuse.
    """
    try:
        pid = int((path / ".lock").read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def view(path: Path) -> RunView:
    rundir = RunDir(path)
    state = rundir.read_state()
    cfg = rundir.frozen_config()
    status = state.get("status", "not started")
    if status in ("running", "waiting for review", "waiting for human evaluation") and not held(path):
        status = "interrupted"  # killed: nothing holds the run (selfplay resume goes on)
    v = RunView(path.name, status, cfg.recipe, state.get("iteration"), cfg.iterations, state.get("stage"),
                updated=state.get("updated", ""))
    prog = path / progress.FILE
    if prog.is_file() and status not in ("finished", "stopped", "rejected"):
        p = read_json(prog)
        if p.get("iteration") == v.iteration and p.get("stage") == v.stage:
            v.done, v.total, v.unit = p.get("done"), p.get("total"), p.get("unit", "")
            v.updated = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(p.get("updated", 0)))
    v.waiting_review = review.pending(path) is not None
    v.waiting_blind = human_eval.waiting(path) is not None
    v.rows = rundir.collect_metrics()
    return v


def runs(root: Path) -> list[RunView]:
    """Every run folder directly under `root` (a symlink leading outside is left out), newest first."""
    found = []
    real_root = root.resolve()
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            real = d.resolve(strict=True)
        except OSError:
            continue
        if real.is_relative_to(real_root) and (d / "config.yaml").is_file():
            found.append(d)
    found.sort(key=lambda d: (d / "state.json").stat().st_mtime if (d / "state.json").is_file() else 0, reverse=True)
    return [_view_or_unreadable(d) for d in found]


def _view_or_unreadable(path: Path) -> RunView:
    """One run's view; a folder that cannot be read (an old config, a broken file) is listed as such, not fatal."""
    try:
        return view(path)
    except Exception as e:  # noqa: BLE001 - one bad folder must not hide every other run
        reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        return RunView(path.name, f"unreadable: {reason}", "?", None, 0, None)


def guard_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The guard table: one row per evaluated iteration, a status per guard, and the alarms and notes."""
    evals = RunDir(path).evaluations()
    shown = [g for g in GUARDS if any(g in e.guards for e in evals.values())]
    rows = []
    for i, e in sorted(evals.items()):
        rows.append({"iteration": i, "status": {g: e.guards[g].status if g in e.guards else "" for g in shown},
                     "alarms": e.alarms,
                     "notes": [f"{g}: {n}" for g, r in e.guards.items() for n in r.notes],
                     "decision": e.decision.action if e.decision else "", "human": e.guards.get("human_eval")})
    return shown, rows


def lineage(path: Path, example_id: str) -> dict[str, Any] | None:
    """One training record traced back: its problem, and for each text it trains on, the sample and verdict."""
    rundir = RunDir(path)
    train_path = rundir.problems_dir / "train.jsonl"
    for d in rundir.iter_dirs():
        i = RunDir.iteration_of(d)
        records = rundir.train_records(i)
        rec = next((r for r in records or [] if r.id == example_id), None)
        if rec is None:
            continue
        problems = {p["id"]: p for p in _rows(train_path)}
        samples = {s["id"]: s for s in rundir.iteration_rows(i, "samples_file")}
        verdicts = {v["sample_id"]: v for v in rundir.iteration_rows(i, "verdicts_file")}
        problem = problems.get(rec.problem_id, {})
        sides = []
        for role, sid, text in zip(("chosen", "rejected") if len(rec.sample_ids) == 2 else ("trained on",),
                                   rec.sample_ids, rec.texts, strict=True):
            s, v = samples.get(sid, {}), verdicts.get(sid, {})
            sides.append({"role": role, "sample": sid, "text": text, "model": s.get("model", ""),
                          "answer": v.get("answer"), "score": v.get("score"), "verifier": v.get("verifier"),
                          "passed": v.get("passed")})
        decision = read_json(d / review.DECISION) if (d / review.DECISION).is_file() else None
        return {"id": rec.id, "iteration": i, "problem_id": rec.problem_id,
                "question": problem.get("question", rec.prompt), "reference": problem.get("reference"),
                "sides": sides, "review": decision}
    return None


def _rows(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def review_request(path: Path) -> tuple[Path | None, dict[str, Any] | None, dict[str, Any] | None]:
    """(iteration folder, request, decision) of the waiting review, else the latest one."""
    it_dir = review.pending(path) or review.latest_request(path)
    if it_dir is None:
        return None, None, None
    decision = read_json(it_dir / review.DECISION) if (it_dir / review.DECISION).is_file() else None
    return it_dir, read_json(it_dir / review.REQUEST), decision


def blind_state(path: Path) -> tuple[Path | None, dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(iteration folder, request, verdicts so far) of the waiting blind evaluation, else the latest one.

    The key saying which side is the new model's is never read here: the page cannot show it.
    """
    it_dir = human_eval.waiting(path)
    if it_dir is None:
        asked = [d for d in RunDir(path).iter_dirs() if (d / human_eval.REQUEST).is_file()]
        it_dir = asked[-1] if asked else None
    if it_dir is None:
        return None, None, {}
    return it_dir, read_json(it_dir / human_eval.REQUEST), human_eval.votes(it_dir)
