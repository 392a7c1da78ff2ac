"""Hand out a run's best model (or a chosen iteration's) as a plain Hugging Face model folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.files import atomic_replace_dir
from selfplay.guards.stopping import best_iteration
from selfplay.loop.rundir import RunDir


def export(run_path: Path, out: Path, iteration: int | None = None, force: bool = False) -> dict[str, Any]:
    """Copy the model of `iteration` (default: the best) to `out`, with a note of where it came from."""
    rundir = RunDir(run_path).require()
    cfg = rundir.frozen_config()
    rows = rundir.metrics() or rundir.rebuild_metrics()
    if not rows:
        raise UserError(f"{run_path}: no iteration has been evaluated yet")
    evaluated = {int(r["iteration"]): r for r in rows}
    chosen = best_iteration(rows, cfg.stop.metric) if iteration is None else iteration
    if chosen not in evaluated:
        raise UserError(f"{run_path}: iteration {chosen} has not been evaluated (evaluated: {sorted(evaluated)})")
    source = rundir.model_of(chosen)
    if not (source / "config.json").is_file():
        raise UserError(f"{source}: the model of iteration {chosen} is missing")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: already exists and is not empty (pass --force to replace it)")
    tmp = out.with_name(out.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    row = evaluated[chosen]
    note = {
        "run": str(rundir.path.resolve()), "iteration": chosen, "best": iteration is None,
        "metric": cfg.stop.metric, "value": row.get(cfg.stop.metric), "source": str(source.resolve()),
    }
    (tmp / "selfplay-export.json").write_text(json.dumps(note, indent=2) + "\n")
    atomic_replace_dir(tmp, out)
    return note
