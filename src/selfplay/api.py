"""The Python API, and the one place where the loop is wired to the recipes and the report.

    from selfplay import api, config
    cfg = config.load_config("configs/rft-default.yaml", ["iterations=1"])
    rows = api.run(cfg)              # the metrics table, one row per evaluated iteration
    api.resume("runs/rft-default")   # continue a killed or finished run

`loop` knows a recipe only as a callable and the report only as a hook; this module resolves `recipe:`
(a built-in from RECIPES or a user's 'module:attr') and hands both in.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from selfplay import config as configlib
from selfplay.files import atomic_write_json
from selfplay.interfaces import Recipe
from selfplay.loop import driver
from selfplay.loop.context import ModelPool, RunModels
from selfplay.loop.evaluation import measure, measure_by_agreement, write_verdicts
from selfplay.loop.rundir import RunDir
from selfplay.models import placement, resolve_model_path
from selfplay.plugins import resolve
from selfplay.recipes import CHECKS, RECIPES
from selfplay.reporting import write_report
from selfplay.tasks import build_task
from selfplay.tasks.labels import has_labels
from selfplay.verifiers import MAJORITY, build_verifier
from selfplay.verifiers.majority import MajorityVerifier


def resolve_recipe(name: str) -> Recipe:
    return resolve(name, RECIPES, "recipe")


def refresh_report(run_path: Path) -> Path | None:
    """Rewrite report.html (and TensorBoard scalars); a failure is reported, never fatal to the run."""
    try:
        return write_report(run_path)
    except Exception as e:
        print(f"report.html not updated ({type(e).__name__}: {e}); retry with: selfplay report {run_path}", flush=True)
        return None


def _finish(ctx: driver.RunContext, recipe: Recipe) -> list[dict[str, Any]]:
    rows, _ = driver.execute(ctx, recipe, on_evaluated=refresh_report)
    report = refresh_report(ctx.rundir.path)
    if report is not None:
        print(f"Report: {report}")
    return rows


def run(cfg: configlib.RunConfig, allow_change: bool = False) -> list[dict[str, Any]]:
    """Start a run (or continue it when its folder holds the same config); return the metrics table."""
    recipe = resolve_recipe(cfg.recipe)
    return _finish(driver.open_run(cfg, cfg.run_dir, allow_change, CHECKS), recipe)


def resume(run_path: Path | str, overrides: list[str] = (), allow_change: bool = False) -> list[dict[str, Any]]:
    """Continue a run from its last finished stage, under its frozen config (plus allowed overrides)."""
    ctx = driver.reopen(Path(run_path), list(overrides), allow_change, CHECKS)
    try:
        recipe = resolve_recipe(ctx.cfg.recipe)
    except BaseException:
        ctx.rundir.unlock()
        raise
    return _finish(ctx, recipe)


def evaluate_model(
    cfg: configlib.RunConfig, model: str, out: Path | None = None, split_from: Path | None = None
) -> tuple[dict[str, Any], Path]:
    """Held-out greedy accuracy and pass@k of `model` on the config's task: eval.json's contents, and the folder.

    `split_from` names a run folder whose frozen held-out split is used; otherwise the task is split afresh.
    """
    model_path = resolve_model_path(model)
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="selfplay-eval-"))
    rundir = RunDir(out)
    rundir.create()
    rundir.lock()
    pool = None
    try:
        source = RunDir(split_from) if split_from else rundir
        if source is rundir:
            shutil.rmtree(rundir.problems_dir, ignore_errors=True)
        task = build_task(cfg.task)
        problems = driver.load_problems(source, task, hidden=cfg.task.labels == "hidden")
        rundir.freeze_config(cfg)
        driver.freeze_problems(rundir, problems)
        pool = ModelPool(placement(cfg.model.device, cfg.model.dtype), cfg.generate.backend, cfg.generate.options)
        # A judge asked for 'current' or 'base' gets the model under evaluation.
        models = RunModels(pool, model_path, current=model_path)
        name = cfg.verify.verifier
        labelled = has_labels(problems.heldout)
        if name == MAJORITY and labelled:
            # As in a run: held-out answers are scored by the gold checker; a majority of one would pass them all.
            name = cfg.guards.gold_verifier or "auto"
        verifier = build_verifier(name, task.default_verifier, strict_format=cfg.verify.strict_format,
                                  options=cfg.verify.options if name == cfg.verify.verifier else None, run=models,
                                  judge=cfg.judge, seed=cfg.seed)
        eval_dir = rundir.path / "eval"
        eval_dir.mkdir(exist_ok=True)
        start = time.perf_counter()
        gen = pool.generator(model_path)
        if isinstance(verifier, MajorityVerifier):  # no labels: agreement with the model's own sampled majority
            m = measure_by_agreement(gen, problems.heldout, verifier, cfg.eval, cfg.seed, "eval")
        else:
            m = measure(gen, problems.heldout, verifier, cfg.eval, cfg.seed, "eval")
        write_verdicts(eval_dir / "eval_samples.jsonl", m.greedy, m.greedy_verdicts)
        result = {"model": str(model_path), "metrics": m.metrics, "seconds": time.perf_counter() - start}
        atomic_write_json(eval_dir / "eval.json", result)
    finally:
        if pool is not None:
            pool.release()
        rundir.unlock()
    return result, eval_dir


def judge_responses(
    cfg: configlib.RunConfig, rows: list[dict[str, str]], model: str | None = None
) -> list[dict[str, Any]]:
    """The judge that `cfg` describes, on (prompt, response) rows: score (None when unparsed) and its record.

    'current' and 'base' mean `model` when given, else the config's starting model.
    """
    from selfplay.records import Problem, Sample
    from selfplay.verifiers.judge import judge_notes

    start = resolve_model_path(model or cfg.model.path)
    pool = ModelPool(placement(cfg.model.device, cfg.model.dtype), cfg.generate.backend, cfg.generate.options)
    try:
        judge = build_verifier("judge", "judge", run=RunModels(pool, start, current=start), judge=cfg.judge,
                               seed=cfg.seed)
        # The prompt names the problem, so every response to one prompt is judged under the same fence, in
        # any row and any call: judging a response again gives the same score.
        pids = [f"prompt-{hashlib.blake2b(r['prompt'].encode(), digest_size=8).hexdigest()}" for r in rows]
        items = [(Problem(pid, r["prompt"], ""), Sample(f"{pid}/row{n}", pid, r["response"], 0, "stop", "input"))
                 for n, (pid, r) in enumerate(zip(pids, rows, strict=True), start=1)]
        verdicts = judge.verify_many(items)
    finally:
        pool.release()
    return [{"row": n, "score": None if v.answer is None else v.score, **judge_notes(v)}
            for n, v in enumerate(verdicts, start=1)]
