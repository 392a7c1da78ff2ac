"""Start or resume a run: lock the folder, freeze config and splits, evaluate the base, run the iterations."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from selfplay import config as configlib
from selfplay.errors import UserError
from selfplay.files import atomic_write_jsonl
from selfplay.loop.context import RunContext
from selfplay.loop.rundir import RunDir
from selfplay.loop.stages import ModelPool, load_records
from selfplay.models import placement, resolve_model_path
from selfplay.records import Problem, to_dict
from selfplay.tasks import build_task
from selfplay.verifiers import build_verifier


def load_problems(rundir: RunDir, cfg: configlib.RunConfig) -> tuple[list[Problem], list[Problem], str, bool]:
    """The run's train and held-out problems: the frozen split if the run has one, else a new split.

    The last value says whether the split is new and still has to be written with `freeze_problems`.
    """
    task = build_task(cfg.task)
    train_path, heldout_path = rundir.problems_dir / "train.jsonl", rundir.problems_dir / "heldout.jsonl"
    if train_path.is_file() and heldout_path.is_file():
        train, heldout, new = load_records(train_path, Problem), load_records(heldout_path, Problem), False
    else:
        split = task.split()
        train, heldout, new = split.train, split.heldout, True
    check_disjoint(train, heldout)
    return train, heldout, task.default_verifier, new


def freeze_problems(rundir: RunDir, train: list[Problem], heldout: list[Problem]) -> None:
    rundir.problems_dir.mkdir(exist_ok=True)
    atomic_write_jsonl(rundir.problems_dir / "heldout.jsonl", (to_dict(p) for p in heldout))
    atomic_write_jsonl(rundir.problems_dir / "train.jsonl", (to_dict(p) for p in train))


def check_disjoint(train: list[Problem], heldout: list[Problem]) -> None:
    """Held-out problems must never reach generation or training; refuse to run if any prompt is shared."""
    seen = {p.meta.get("question", p.prompt).strip() for p in train}
    leaked = [p.id for p in heldout if p.meta.get("question", p.prompt).strip() in seen]
    if leaked:
        raise UserError(f"held-out problems also appear in the training split: {', '.join(leaked[:5])}")


def open_run(cfg: configlib.RunConfig, run_path: Path, allow_change: bool) -> RunContext:
    rundir = RunDir(run_path)
    made = rundir.create()
    rundir.lock()
    try:
        # Everything is checked before anything is written, so a mistake leaves the run as it was.
        rundir.check_config(cfg, allow_change)
        train, heldout, default_verifier, new_split = load_problems(rundir, cfg)
        verifier = build_verifier(cfg.verify.verifier, default_verifier, cfg.verify.strict_format)
        where = placement(cfg.model.device, cfg.model.dtype)
        base_path = resolve_model_path(cfg.model.path)
        rundir.freeze_config(cfg)
        if new_split:
            freeze_problems(rundir, train, heldout)
    except BaseException:
        rundir.unlock()
        if made:  # a first start that failed leaves no half-made run folder behind
            shutil.rmtree(rundir.path, ignore_errors=True)
        raise
    pool = ModelPool(where, cfg.generate.backend, cfg.generate.batch_size)
    return RunContext(cfg, rundir, train, heldout, verifier, pool, where, base_path)


def execute(ctx: RunContext) -> list[dict[str, Any]]:
    """Run every unfinished stage of every iteration; return the metrics table."""
    from selfplay.recipes import RECIPES

    cfg = ctx.cfg
    start = time.perf_counter()
    print(
        f"Run {ctx.rundir.path}: {cfg.recipe}, {cfg.iterations} iteration(s), {len(ctx.train)} train / "
        f"{len(ctx.heldout)} held-out problems, model {ctx.base_path}, {ctx.where.device}",
        flush=True,
    )
    ctx.rundir.write_state(status="running", base_model=str(ctx.base_path), iterations=cfg.iterations)
    try:
        ctx.evaluate(0)
        for i in range(1, cfg.iterations + 1):
            RECIPES[cfg.recipe](ctx, i)
        rows = ctx.rundir.rebuild_metrics()
        ctx.rundir.write_state(status="finished", stage=None)
    except BaseException as e:
        ctx.rundir.write_state(status="interrupted")
        if isinstance(e, KeyboardInterrupt):
            print(f"\nStopped. Finished stages are kept; continue with: selfplay resume {ctx.rundir.path}", flush=True)
        raise
    finally:
        ctx.pool.release()
        ctx.rundir.unlock()
    print(f"\nFinished in {time.perf_counter() - start:.0f}s (this session). Metrics: {ctx.rundir.metrics_path}")
    print(format_table(rows, cfg.eval.pass_k if cfg.eval.samples else None))
    return rows


def run(cfg: configlib.RunConfig, allow_change: bool = False) -> list[dict[str, Any]]:
    return execute(open_run(cfg, cfg.run_dir, allow_change))


def resume(run_path: Path, overrides: list[str], allow_change: bool) -> list[dict[str, Any]]:
    rundir = RunDir(run_path)
    frozen = rundir.frozen_config()
    if frozen is None:
        raise UserError(f"{run_path}: not a run folder (no config.yaml)")
    data = frozen.model_dump(mode="json")
    cfg = configlib.validate(configlib.apply_overrides(data, overrides), f"{rundir.config_path} + overrides")
    # The folder named on the command line is the run, wherever it has been moved since it started.
    return execute(open_run(cfg, rundir.path, allow_change))


def format_table(rows: list[dict[str, Any]], pass_k: int | None) -> str:
    """The per-iteration summary printed at the end of a run."""
    head = ["iter", "greedy acc", "95% CI"]
    if pass_k:
        head.append(f"pass@{pass_k}")
    head += ["mean len", "kept", "solved"]
    lines = [head]
    for r in rows:
        lo, hi = r["greedy_ci95"]
        line = [str(r["iteration"]), f"{r['greedy_accuracy']:.1%}", f"[{lo:.1%}, {hi:.1%}]"]
        if pass_k:
            line.append(f"{r.get(f'pass@{pass_k}', 0.0):.1%}")
        line += [f"{r['mean_length']:.1f}", str(r.get("kept", "-")), str(r.get("problems_solved", "-"))]
        lines.append(line)
    widths = [max(len(row[c]) for row in lines) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in lines)
