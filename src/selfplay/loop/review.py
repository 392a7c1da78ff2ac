"""Human review gates: pause after the filter stage, show a person a sample of the training data, wait.

Files in the iteration folder:
    review.request.json   the examples shown (a seeded random sample of train.jsonl with their verdicts)
    review.html           the same, as a static page
    review.decision.json  written by `selfplay approve` / `selfplay reject` (atomically; another shell works)
    review.json           the gate's stage summary (written by the stage runner once the decision is taken)

The waiting run polls for the decision file, so it can be approved from another shell; a run killed while
waiting resumes into the same wait, and the decision can be given before it resumes.
"""

from __future__ import annotations

import html
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.files import atomic_write_json, atomic_write_text, create_json_once, read_json, read_jsonl
from selfplay.loop.rundir import RunDir
from selfplay.records import Pair, Problem

REQUEST, DECISION, SUMMARY, PAGE = "review.request.json", "review.decision.json", "review.json", "review.html"


class ReviewRejected(Exception):
    """A reviewer rejected an iteration's training data; the run stops."""


def build_request(it_dir: Path, problems: Sequence[Problem], sample_size: int, seed: int) -> dict[str, Any]:
    rundir = RunDir(it_dir.parent)
    i = RunDir.iteration_of(it_dir)
    by_id = {p.id: p for p in problems}
    records = rundir.train_records(i) or []
    verdicts = {v["sample_id"]: v for v in read_jsonl(it_dir / "verdicts.jsonl")}
    chosen = sorted(random.Random(seed).sample(range(len(records)), min(sample_size, len(records))))
    shown = []
    for idx in chosen:
        rec = records[idx]
        problem = by_id.get(rec.problem_id)
        first, *rest = rec.sample_ids
        item = {
            "id": rec.id,
            "problem_id": rec.problem_id,
            "prompt": rec.prompt,  # as the model saw it; a preference row carries it, so it matches the AI's pair
            "messages": rec.messages,
            "question": problem.question if problem else rec.prompt,
            "reference": problem.reference if problem else None,
            "completion": rec.texts[0],
            "verdict": verdicts.get(first),
        }
        if rest:  # a preference pair: the rejected side too
            item.update(rejected=rec.texts[1], rejected_verdict=verdicts.get(rest[0]))
        shown.append(item)
    return {"iteration": i, "examples_total": len(records), "shown": shown}


def _rejected_html(ex: dict[str, Any]) -> str:
    if "rejected" not in ex:
        return ""
    score = (ex.get("rejected_verdict") or {}).get("score")
    return f"<p><b>rejected</b> (score {html.escape(str(score))}):</p><pre>{html.escape(ex['rejected'])}</pre>"


def render_page(request: dict[str, Any], run_path: Path) -> str:
    """A static page of the request; model text is escaped, never interpreted."""
    rows = []
    for ex in request["shown"]:
        v = ex.get("verdict") or {}
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                ex["id"], ex["question"], ex["reference"], v.get("answer"), v.get("score"),
            )) + f"<td><pre>{html.escape(ex['completion'])}</pre>{_rejected_html(ex)}</td></tr>"
        )
    i = request["iteration"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Review iteration {i}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;vertical-align:top}}pre{{white-space:pre-wrap;margin:0;max-width:40em}}</style></head><body>
<h1>Review: iteration {i} of {html.escape(str(run_path))}</h1>
<p>{len(request['shown'])} of {request['examples_total']} training examples, chosen at random.</p>
<p>Approve: <code>selfplay approve {html.escape(str(run_path))} [--reject ID ...]</code> &nbsp;
Reject (stops the run): <code>selfplay reject {html.escape(str(run_path))}</code></p>
<table><tr><th>example id</th><th>question</th><th>reference</th><th>answer</th><th>score</th><th>completion</th></tr>
{''.join(rows)}</table></body></html>"""


def gate(it_dir: Path, run_path: Path, problems: Sequence[Problem], sample_size: int, seed: int,
         poll_seconds: float) -> dict[str, Any]:
    """Write the review request if needed and wait for a decision; the result lists rejected record ids."""
    if not (it_dir / REQUEST).is_file():
        request = build_request(it_dir, problems, sample_size, seed)
        atomic_write_text(it_dir / PAGE, render_page(request, run_path))
        atomic_write_json(it_dir / REQUEST, request)
    decision_path = it_dir / DECISION
    if not decision_path.is_file():
        RunDir(run_path).write_state(status="waiting for review", iteration=RunDir.iteration_of(it_dir))
        print(
            f"\n{it_dir.name}: waiting for review of the training data ({it_dir / PAGE}).\n"
            f"  show:    selfplay review {run_path}\n"
            f"  go on:   selfplay approve {run_path} [--reject EXAMPLE_ID ...]\n"
            f"  stop:    selfplay reject {run_path}\n"
            "This process waits; Ctrl-C is safe, and `selfplay resume` comes back to this point.",
            flush=True,
        )
    while not decision_path.is_file():
        time.sleep(poll_seconds)
    RunDir(run_path).write_state(status="running")
    # Waiting for a person is not compute: it stays out of the stage-time plot.
    return {**read_json(decision_path), "seconds": 0.0}


def raise_if_rejected(it_dir: Path, summary: dict[str, Any]) -> None:
    if summary["decision"] == "rejected":
        raise ReviewRejected(f"{it_dir.name}: a reviewer rejected the training data; the run stops here")


def pending(run_path: Path) -> Path | None:
    """The iteration folder whose review is waiting for a decision, if any."""
    waiting = [d for d in RunDir(run_path).iter_dirs() if (d / REQUEST).is_file()
               and not (d / DECISION).is_file()]
    return waiting[-1] if waiting else None


def latest_request(run_path: Path) -> Path | None:
    requests = [d for d in RunDir(run_path).iter_dirs() if (d / REQUEST).is_file()]
    return requests[-1] if requests else None


def decide(run_path: Path, decision: str, rejected_ids: Sequence[str] = (), reason: str | None = None,
           flipped_ids: Sequence[str] = (), who: str = "", confirmed_ids: Sequence[str] = (),
           iteration: int | None = None) -> str:
    """Record a reviewer's decision for the waiting iteration; giving the same decision twice is harmless.

    `flipped_ids` names preference pairs the person thinks are the wrong way round (they train swapped), and
    `confirmed_ids` pairs the person says are the right way round; both count `review.human_weight` times and
    become human preference rows. `iteration`, when given (the web form sends the one it showed), must be the
    waiting one: a form left open while the run moved on decides nothing. Of two people deciding at once, the
    first decision stands and the second gets a UserError.
    """
    run_path = RunDir(run_path).require().path
    it_dir = pending(run_path)
    if iteration is not None and (it_dir is None or RunDir.iteration_of(it_dir) != iteration):
        shown = RunDir(run_path).iter_dir(iteration)
        if (shown / DECISION).is_file():
            return _same_or_refuse(shown, decision, rejected_ids, flipped_ids, confirmed_ids)
        now = f"; {it_dir.name} is waiting now (reload the page)" if it_dir is not None else ""
        raise UserError(f"{shown.name}: not waiting for review{now}")
    if it_dir is None:
        last = latest_request(run_path)
        if last is not None and (last / DECISION).is_file():
            return _same_or_refuse(last, decision, rejected_ids, flipped_ids, confirmed_ids)
        raise UserError(f"{run_path}: no iteration is waiting for review")
    records = RunDir(run_path).train_records(RunDir.iteration_of(it_dir)) or []
    known = {r.id for r in records}
    unknown = [r for r in [*rejected_ids, *flipped_ids, *confirmed_ids] if r not in known]
    if unknown:
        raise UserError(f"{it_dir.name}: no training example with id {unknown[0]!r} (see selfplay review {run_path})")
    pairs = {r.id for r in records if isinstance(r, Pair)}
    not_pairs = [r for r in [*flipped_ids, *confirmed_ids] if r not in pairs]
    if not_pairs:
        raise UserError(f"{it_dir.name}: example {not_pairs[0]!r} is not a preference pair; only a pair can be "
                        "flipped or confirmed")
    sets = [set(rejected_ids), set(flipped_ids), set(confirmed_ids)]
    both = sorted((sets[0] & sets[1]) | (sets[0] & sets[2]) | (sets[1] & sets[2]))
    if both:
        raise UserError(f"{it_dir.name}: example {both[0]!r} is given two of reject, flip and confirm; choose one")
    record: dict[str, Any] = {
        "decision": decision, "rejected_ids": sorted(sets[0]),
        "decided_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if flipped_ids:
        record["flipped_ids"] = sorted(sets[1])
    if confirmed_ids:
        record["confirmed_ids"] = sorted(sets[2])
    if reason:
        record["reason"] = reason
    if who := person(who):
        record["who"] = who
    if not create_json_once(it_dir / DECISION, record):  # someone decided a moment ago: theirs stands
        return _same_or_refuse(it_dir, decision, rejected_ids, flipped_ids, confirmed_ids)
    removed = f", {len(record['rejected_ids'])} example(s) removed" if record["rejected_ids"] else ""
    flipped = f", {len(sets[1])} pair(s) flipped" if flipped_ids else ""
    confirmed = f", {len(sets[2])} pair(s) confirmed" if confirmed_ids else ""
    return f"{it_dir.name}: {decision}{removed}{flipped}{confirmed}"


def person(who: object) -> str:
    """A person's name as the decision and verdict files keep it: one line, at most 80 characters."""
    return " ".join(str(who).split())[:80]


def _same_or_refuse(it_dir: Path, decision: str, rejected_ids: Sequence[str], flipped_ids: Sequence[str],
                    confirmed_ids: Sequence[str]) -> str:
    earlier = read_json(it_dir / DECISION)
    if (earlier["decision"] == decision and sorted(earlier.get("rejected_ids", [])) == sorted(set(rejected_ids))
            and sorted(earlier.get("flipped_ids", [])) == sorted(set(flipped_ids))
            and sorted(earlier.get("confirmed_ids", [])) == sorted(set(confirmed_ids))):
        return f"{it_dir.name}: already {decision}; nothing to do"
    by = f" by {earlier['who']}" if earlier.get("who") else ""
    raise UserError(f"{it_dir.name}: already {earlier['decision']}{by} at {earlier.get('decided_at', '?')}; "
                    "a decision cannot be changed")


def preference_rows(rundir: RunDir) -> list[dict[str, Any]]:
    """Preference pairs a person confirmed or flipped in an approved review, as {prompt, chosen, rejected, who,
    when, ...} rows, the prompt as the model saw it. A pair only kept (no call made on it) makes no row."""
    rows = []
    for d in rundir.iter_dirs():
        if not (d / REQUEST).is_file() or not (d / DECISION).is_file():
            continue
        decision = read_json(d / DECISION)
        if decision["decision"] != "approved":
            continue
        flipped, confirmed = set(decision.get("flipped_ids", [])), set(decision.get("confirmed_ids", []))
        for ex in read_json(d / REQUEST)["shown"]:
            if "rejected" not in ex or ex["id"] not in flipped | confirmed:
                continue
            chosen, other = (ex["rejected"], ex["completion"]) if ex["id"] in flipped else (ex["completion"],
                                                                                          ex["rejected"])
            row = {"prompt": ex.get("prompt", ex["question"]), "chosen": chosen, "rejected": other,
                   "who": decision.get("who") or "anonymous", "when": decision["decided_at"],
                   "note": decision.get("reason", ""), "source": "review", "split": "train",
                   "problem_id": ex["problem_id"], "iteration": RunDir.iteration_of(d), "id": ex["id"],
                   "flipped": ex["id"] in flipped}
            if ex.get("messages"):
                row["messages"] = ex["messages"]
            rows.append(row)
    return rows


def human_labelled(it_dir: Path) -> tuple[set[str], set[str]]:
    """(ids of the pairs a person confirmed, ids flipped) in this iteration's review decision."""
    if not (it_dir / DECISION).is_file():
        return set(), set()
    decision = read_json(it_dir / DECISION)
    return set(decision.get("confirmed_ids", [])), set(decision.get("flipped_ids", []))


def _printable(text: object) -> str:
    """Model text for a terminal: control characters (escape sequences) shown escaped, not obeyed."""
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in str(text))


def show(run_path: Path) -> str:
    """The waiting (or latest) review request as terminal text."""
    run_path = RunDir(run_path).require().path
    it_dir = pending(run_path) or latest_request(run_path)
    if it_dir is None:
        raise UserError(f"{run_path}: no review has been requested (set review.every to pause for review)")
    request = read_json(it_dir / REQUEST)
    decided = it_dir / DECISION
    state = f"decided: {read_json(decided)['decision']}" if decided.is_file() else "waiting for a decision"
    lines = [f"{it_dir.name}: {len(request['shown'])} of {request['examples_total']} training examples ({state})",
             f"page: {it_dir / PAGE}", ""]
    for ex in request["shown"]:
        v = ex.get("verdict") or {}
        lines.append(f"[{ex['id']}]  reference: {_printable(ex['reference'])}  answer: {_printable(v.get('answer'))}"
                     f"  score: {v.get('score')}")
        lines.append(f"  question:   {_printable(ex['question'])}")
        completion = _printable(ex["completion"]).replace("\n", "\n              ")
        lines.append(f"  completion: {completion}")
        if "rejected" in ex:
            rejected = _printable(ex["rejected"]).replace("\n", "\n              ")
            lines.append(f"  rejected:   {rejected}  (score {(ex.get('rejected_verdict') or {}).get('score')})")
        lines.append("")
    return "\n".join(lines)
