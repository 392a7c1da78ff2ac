"""The pseudo-label audit of a label-free run (verify.verifier: majority), wired to the run's files and checkers.

Every evaluation builds one row per problem (its majority answer, vote share, whether the hidden label agrees,
whether it was trained on) and hands them to the pure functions of guards/pseudo_labels.py:

    iter-NNN/pseudo_labels.jsonl   one row per training problem of iteration NNN (no labels in it: only whether
                                   the majority was right), read back by the next iteration's entrenchment figures

A majority answer is checked against gold as the synthetic completion "Answer: <majority>" of the labelled
problem, scored by the run's gold checker (guards.gold_verifier): the task's own notion of right. The labels
come from problems/train-labels.jsonl (task.labels: hidden) and problems/heldout.jsonl; nothing that trains
reads either.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from selfplay.files import atomic_write_jsonl, read_jsonl
from selfplay.guards import pseudo_labels as audit
from selfplay.loop.context import RunContext
from selfplay.loop.rundir import load_records
from selfplay.records import Problem, Sample, Verdict
from selfplay.results import GuardResult
from selfplay.verifiers import verify_all
from selfplay.verifiers.majority import MajorityVerifier

NO_LABELS = "no labels: nothing can be audited against gold"
ROWS = "pseudo_labels.jsonl"


def _correct(ctx: RunContext, labelled: dict[str, Problem], rows: list[dict[str, Any]]) -> None:
    """Set each row's `correct`: does the gold checker accept its majority answer for the labelled problem?"""
    voted = [r for r in rows if r["majority"] is not None and r["problem_id"] in labelled]
    items = [(labelled[r["problem_id"]], Sample(f"{r['problem_id']}/majority", r["problem_id"],
                                                f"Answer: {r['majority']}", 0, "stop", "majority")) for r in voted]
    for r, v in zip(voted, verify_all(ctx.gold, items) if items else [], strict=True):
        r["correct"] = bool(v.passed)


def _row(problem_id: str, majority: str | None, share: float, votes: int, samples: int, tie: bool) -> dict[str, Any]:
    status = "majority" if majority is not None else "tie" if tie else "unreadable"
    return {"problem_id": problem_id, "majority": majority, "share": share, "votes": votes, "samples": samples,
            "status": status, "correct": None, "trained": False}


def heldout_rows(verifier: MajorityVerifier, problems: Sequence[Problem], sampled: Sequence[Sample]
                 ) -> list[dict[str, Any]]:
    """One row per held-out problem: the majority of its pass@k samples."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in sampled:
        groups[s.problem_id].append(s)
    rows = []
    for p in problems:
        if groups[p.id]:
            vote = verifier.vote(p, groups[p.id])
            rows.append(_row(p.id, vote.answer, vote.share, len(vote.majority or []), vote.samples, vote.tie))
    return rows


def train_rows(ctx: RunContext, i: int) -> list[dict[str, Any]]:
    """One row per training problem of iteration `i`, from its verdicts (the majority verifier's details)."""
    path = ctx.rundir.iter_dir(i) / "verdicts.jsonl"
    if not path.is_file():
        return []
    # One vote per problem; online RL (grpo, TTRL) votes on each group of rollouts, so once per problem and update,
    # and trains toward the majority of every group where one passed.
    first: dict[tuple[str, Any], Verdict] = {}
    tied: set[tuple[str, Any]] = set()
    passed: set[tuple[str, Any]] = set()
    for v in load_records(path, Verdict):
        key = (v.problem_id, (v.details or {}).get("step"))
        first.setdefault(key, v)
        if (v.details or {}).get("status") == "tie":
            tied.add(key)
        if v.passed:
            passed.add(key)
    trained = {r.problem_id for r in ctx.rundir.train_records(i) or []}
    rows = []
    for key, v in first.items():
        pid, step = key
        d = v.details or {}
        row = _row(pid, d.get("majority"), float(d.get("share", 0.0)), int(d.get("votes", 0)), int(d.get("samples", 0)),
                   key in tied)
        row["trained"] = key in passed if step is not None else pid in trained
        rows.append(row)
    return rows


def _next_iteration(ctx: RunContext, verifier: MajorityVerifier, i: int, before: list[dict[str, Any]],
                    rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For entrenchment: at iteration `i` (its `rows`), each earlier majority's fate (see audit.entrenchment)."""
    by_id = {p.id: p for p in ctx.train_problems}
    answers: dict[str, list[str | None]] = defaultdict(list)
    for v in load_records(ctx.rundir.iter_dir(i) / "verdicts.jsonl", Verdict):
        answers[v.problem_id].append(v.answer)
    now = {r["problem_id"]: r for r in rows}
    out = {}
    for r in before:
        pid, wrong = r["problem_id"], r["majority"]
        if pid not in now or wrong is None or pid not in by_id:
            continue
        said = answers[pid]
        agree = sum(a is not None and verifier.same(by_id[pid], wrong, a) for a in said)
        current = now[pid]["majority"]
        out[pid] = {"correct": now[pid]["correct"], "earlier_share": agree / len(said) if said else 0.0,
                    "same": current is not None and verifier.same(by_id[pid], wrong, current)}
    return out


def pseudo_label_guard(ctx: RunContext, i: int, sampled: Sequence[Sample]) -> GuardResult:
    """The audit of iteration `i`: held-out majority (every iteration), training pseudo-labels and entrenchment."""
    verifier = ctx.verifier
    if not isinstance(verifier, MajorityVerifier):
        return GuardResult("n/a", notes=[f"the run's verifier is {verifier.name}, not majority: no pseudo-labels"])
    gold = None if ctx.unlabelled else ctx.gold
    m = verifier.min_agreement
    figures: dict[str, Any] = {"min_agreement": m, "equal": verifier.equal_name}
    notes: list[str] = []
    held = heldout_rows(verifier, ctx.heldout, sampled)
    train = train_rows(ctx, i) if i > 0 else []
    if gold is not None:
        _correct(ctx, {p.id: p for p in ctx.heldout}, held)
        _correct(ctx, {p.id: p for p in ctx.labelled_train}, train)
    if held:
        figures["heldout"] = audit.confidently_wrong(held, m) if gold is not None else {
            "problems": len(held), "confident": sum(r["majority"] is not None and r["share"] >= m for r in held)}
    else:
        notes.append("no held-out samples (eval.samples: 0): the held-out majority is not measured")
    if train:
        atomic_write_jsonl(ctx.rundir.iter_dir(i) / ROWS, train)
        figures["train"] = audit.accuracy(train, m)
        figures["calibration"] = audit.calibration(train)
        before = ctx.rundir.iter_dir(i - 1) / ROWS
        if gold is not None and i > 1 and before.is_file():
            earlier = read_jsonl(before)
            figures["entrenchment"] = audit.entrenchment(earlier, _next_iteration(ctx, verifier, i, earlier, train), m)
    if ctx.unlabelled:
        return GuardResult("n/a", notes=[NO_LABELS, *notes], figures=figures)
    if gold is None:
        return GuardResult("n/a", notes=["no gold checker (guards.gold_verifier is null): pseudo-labels are not "
                                         "audited", *notes], figures=figures)
    alarms = audit.alarms(figures.get("train"), i)
    return GuardResult("alarm" if alarms else "ok", alarms, notes, figures)
