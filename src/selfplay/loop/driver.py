"""Start or resume a run: lock the folder, freeze config and splits, evaluate the base, run the iterations.

The driver owns the iteration: it picks the model to sample from (the last one, or the best after a
rollback), calls the recipe, then always evaluates the model the recipe returns and applies the stop
rules. It knows recipes only as a callable and the report only as a hook, both handed in by
`selfplay.api`, so nothing here imports `recipes` or `reporting`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay import config as configlib
from selfplay.errors import UserError, WriteError, write_failure
from selfplay.files import atomic_write_jsonl
from selfplay.interfaces import Recipe
from selfplay.loop.context import ControlSet, ModelPool, RunContext, RunModels
from selfplay.loop.evaluation import decision_after, evaluate_iteration
from selfplay.loop.review import ReviewRejected
from selfplay.loop.rundir import RunDir, load_records
from selfplay.loop.runner import run_stage
from selfplay.models import placement, resolve_model_path
from selfplay.records import Problem, to_dict
from selfplay.results import Decision
from selfplay.scale import RayWorkers, fan_out_verifier
from selfplay.tasks import build_control, build_task, control_task
from selfplay.tasks.labels import has_labels, hide_labels
from selfplay.verifiers import LABEL_READERS, MAJORITY, build_verifier, reads_labels

NO_LABELS = "no labels: nothing can be audited against gold"


@dataclass
class Problems:
    train: list[Problem]
    heldout: list[Problem]
    exemplar: Problem | None
    new: bool  # a fresh split, still to be written with `freeze_problems`
    labels: list[Problem] | None = None  # task.labels: hidden: the training problems with their answers (audit only)


def load_problems(rundir: RunDir, task, hidden: bool = False) -> Problems:
    """The run's train and held-out problems: the frozen split if the run has one, else a new split.

    With `hidden`, the training problems come without their answers (tasks.labels) and `labels` holds the originals.
    """
    d = rundir.problems_dir
    labels_file = d / "train-labels.jsonl"
    if (d / "train.jsonl").is_file() and (d / "heldout.jsonl").is_file():
        exemplar = load_records(d / "exemplar.jsonl", Problem) if (d / "exemplar.jsonl").is_file() else []
        found = Problems(load_records(d / "train.jsonl", Problem), load_records(d / "heldout.jsonl", Problem),
                         exemplar[0] if exemplar else None, False,
                         load_records(labels_file, Problem) if labels_file.is_file() else None)
        if hidden and found.labels is None and has_labels(found.train):
            raise UserError(f"task.labels: hidden, but {d / 'train.jsonl'} holds the answers: the run started with "
                            "labels visible; start a new run to hide them")
        if not hidden and found.labels is not None:
            raise UserError(f"task.labels: visible, but the run started with labels hidden ({labels_file}); "
                            "keep task.labels: hidden")
    else:
        split = task.split()
        found = Problems(split.train, split.heldout, split.exemplar, True)
        if hidden:
            found = Problems(hide_labels(split.train), split.heldout, split.exemplar, True, split.train)
    check_disjoint(found.train, found.heldout)
    return found


def freeze_problems(rundir: RunDir, problems: Problems) -> None:
    rundir.problems_dir.mkdir(exist_ok=True)
    if problems.exemplar is not None:
        atomic_write_jsonl(rundir.problems_dir / "exemplar.jsonl", [to_dict(problems.exemplar)])
    atomic_write_jsonl(rundir.problems_dir / "heldout.jsonl", (to_dict(p) for p in problems.heldout))
    if problems.labels is not None:  # read by the pseudo-label audit only, never by a stage that trains
        atomic_write_jsonl(rundir.problems_dir / "train-labels.jsonl", (to_dict(p) for p in problems.labels))
    atomic_write_jsonl(rundir.problems_dir / "train.jsonl", (to_dict(p) for p in problems.train))


def load_controls(
    rundir: RunDir, cfg: configlib.RunConfig, strict_format: bool, models: RunModels
) -> tuple[list[ControlSet], bool]:
    """Control tasks, frozen in problems/control-NAME.jsonl at the first start; the bool says some are new."""
    controls, new = [], False
    for c in cfg.guards.control:
        frozen = rundir.problems_dir / f"control-{c.name}.jsonl"
        if frozen.is_file():
            problems = load_records(frozen, Problem)
        else:
            problems, new = build_control(c), True
        verifier = build_verifier(c.verifier, control_task(c).default_verifier, strict_format=strict_format,
                                  run=models, field=f"guards.control[{c.name}].verifier")
        controls.append(ControlSet(c.name, problems, verifier))
    return controls, new


def freeze_controls(rundir: RunDir, controls: list[ControlSet]) -> None:
    rundir.problems_dir.mkdir(exist_ok=True)
    for c in controls:
        path = rundir.problems_dir / f"control-{c.name}.jsonl"
        if not path.is_file():
            atomic_write_jsonl(path, (to_dict(p) for p in c.problems))


def check_disjoint(train: list[Problem], heldout: list[Problem]) -> None:
    """Held-out problems must never reach generation or training; refuse to run if any prompt is shared."""
    seen = {p.question.strip() for p in train}
    leaked = [p.id for p in heldout if p.question.strip() in seen]
    if leaked:
        raise UserError(f"held-out problems also appear in the training split: {', '.join(leaked[:5])}")


def open_run(
    cfg: configlib.RunConfig, run_path: Path, allow_change: bool,
    checks: Mapping[str, Callable[..., None]] | None = None,
) -> RunContext:
    """Lock and check the run folder, freeze config and splits, and build the run's parts.

    `checks[cfg.recipe](cfg, task, train_problems)`, the recipe's own check when it has one, refuses a task it
    cannot run before anything is written (SPIN without demonstrations).
    """
    rundir = RunDir(run_path)
    made = rundir.create()
    rundir.lock()
    try:
        # Everything is checked before anything is written, so a mistake leaves the run as it was.
        rundir.check_config(cfg, allow_change)
        task = build_task(cfg.task)
        problems = load_problems(rundir, task, hidden=cfg.task.labels == "hidden")
        unlabelled = check_labels(cfg, task, problems)
        check = (checks or {}).get(cfg.recipe)
        if check is not None:
            check(cfg, task, problems.train)
        options = cfg.generate.options
        if cfg.generate.backend == "openai" and options.get("base_url") and not options.get("launch"):
            # A server at a fixed URL serves one model; every iteration of a run evaluates the model it trained.
            raise UserError("generate.options.base_url: a server at a fixed URL serves one model, but a run samples "
                            "and evaluates each iteration's trained model; use generate.options.launch (transformers, "
                            "vllm or a command) so each model gets its server, or teacher.model for a teacher")
        where = placement(cfg.model.device, cfg.model.dtype)
        base_path = resolve_model_path(cfg.model.path)
        # On Ray (scale.ray_address) the workers start when the first stage needs them, not here.
        workers = RayWorkers(cfg.scale, cfg.model.device, cfg.model.dtype, cfg.generate.backend,
                             cfg.generate.options) if cfg.scale.on_ray else None
        models = RunModels(ModelPool(where, cfg.generate.backend, cfg.generate.options, workers=workers), base_path)
        controls, new_controls = load_controls(rundir, cfg, cfg.verify.strict_format, models)
        v = cfg.verify

        def verifier_for(name: str, options: dict[str, Any], field: str):
            # Built here, and described by the same arguments so a Ray worker can build it too (scale.verify).
            spec = {"name": name, "task_default": task.default_verifier, "strict_format": v.strict_format,
                    "options": options, "field": field, "judge": cfg.judge.model_dump(mode="json"), "seed": cfg.seed}
            local = build_verifier(name, task.default_verifier, strict_format=v.strict_format, options=options,
                                   run=models, field=field, judge=cfg.judge, seed=cfg.seed)
            return fan_out_verifier(local, cfg.scale, workers, models, spec)

        verifier = verifier_for(v.verifier, v.options, "verify.verifier")
        gold_name = cfg.guards.gold_verifier
        if unlabelled and gold_name is not None and reads_labels(gold_name, task.default_verifier):
            gold_name = None  # nothing to check against
        gold = None if gold_name is None else verifier_for(gold_name, {}, "guards.gold_verifier")
        rundir.freeze_config(cfg)
        if problems.new:
            freeze_problems(rundir, problems)
        if new_controls:
            freeze_controls(rundir, controls)
    except BaseException:
        rundir.unlock()
        if made:  # a first start that failed leaves no half-made run folder behind
            shutil.rmtree(rundir.path, ignore_errors=True)
        raise
    if unlabelled:
        print(f"Task {task.name} has no answers: the run is label-free, held-out answers are scored by agreement "
              f"with the model's own sampled majority, and {NO_LABELS}.", flush=True)
    return RunContext(cfg, rundir, task, problems.train, problems.heldout, verifier, models, where, gold=gold,
                      controls=controls, exemplar=problems.exemplar, train_labels=problems.labels,
                      unlabelled=unlabelled)


def check_labels(cfg: configlib.RunConfig, task, problems: Problems) -> bool:
    """Refuse a verifier that reads the answers when they are hidden (or absent); True when the task has none."""
    unlabelled = task.default_verifier in LABEL_READERS and not has_labels([*problems.train, *problems.heldout])
    name = cfg.verify.verifier
    if cfg.task.labels == "hidden" and reads_labels(name, task.default_verifier):
        raise UserError(f"task.labels: hidden: verify.verifier '{name}' reads the answers; use '{MAJORITY}' or 'judge'")
    if unlabelled and reads_labels(name, task.default_verifier):
        raise UserError(f"task {task.name} has no answers: verify.verifier '{name}' reads them; use '{MAJORITY}' "
                        "or 'judge'")
    if unlabelled and name == MAJORITY and cfg.eval.samples < 2:
        raise UserError(f"eval.samples: with no answers, held-out answers are scored against the model's own sampled "
                        f"majority, which needs at least 2 samples per problem (got {cfg.eval.samples})")
    return unlabelled


def evaluate(ctx: RunContext, i: int, model: Path, on_evaluated: Callable[[Path], Any] | None) -> None:
    """The eval stage of iteration `i` (skipped when done), then metrics.jsonl and the report hook."""
    run_stage(ctx.rundir, i, "eval", lambda: evaluate_iteration(ctx, i, model))
    ctx.rundir.rebuild_metrics()
    if on_evaluated is not None:
        on_evaluated(ctx.rundir.path)


def execute(
    ctx: RunContext, recipe: Recipe, on_evaluated: Callable[[Path], Any] | None = None
) -> tuple[list[dict[str, Any]], Decision]:
    """Run every unfinished stage of every iteration until the cap or a stop rule; return the metrics and decision."""
    cfg = ctx.cfg
    start = time.perf_counter()
    print(
        f"Run {ctx.rundir.path}: {cfg.recipe}, {cfg.iterations} iteration(s), {len(ctx.train_problems)} train / "
        f"{len(ctx.heldout)} held-out problems, model {ctx.base_path}, {ctx.where.device}",
        flush=True,
    )
    ctx.rundir.write_state(status="running", base_model=str(ctx.base_path), iterations=cfg.iterations)
    try:
        evaluate(ctx, 0, ctx.base_path, on_evaluated)
        i = 0
        decision = decision_after(ctx, 0)
        while decision.goes_on and i < cfg.iterations:
            i += 1
            source = ctx.model_after(i - 1)
            if decision.action == "rollback":
                print(f"Rolling back: iteration {i} samples from the model of iteration "
                      f"{decision.best_iteration}", flush=True)
                source = ctx.model_after(decision.best_iteration)
            ctx.models.current = source
            ctx.rundir.iter_dir(i).mkdir(parents=True, exist_ok=True)
            trained = recipe(ctx, i, source)
            evaluate(ctx, i, trained, on_evaluated)
            decision = decision_after(ctx, i)
        status = "stopped" if decision.action == "stop" else "finished"
        rows = ctx.rundir.rebuild_metrics()
        ctx.rundir.write_state(status=status, stage=None, best_iteration=decision.best_iteration,
                               stop_reasons=decision.reasons)
    except ReviewRejected as e:
        ctx.rundir.write_state(status="rejected", stage=None)
        raise UserError(str(e)) from None
    except BaseException as e:
        _mark_interrupted(ctx.rundir)
        if isinstance(e, KeyboardInterrupt):
            print(f"\nStopped. Finished stages are kept; continue with: selfplay resume {ctx.rundir.path}", flush=True)
        if isinstance(e, WriteError):
            raise UserError(f"{e}, then resume the run: selfplay resume {ctx.rundir.path}") from None
        if isinstance(e, OSError) and write_failure(e) is not None:
            raise UserError(f"{WriteError(e.filename or ctx.rundir.path, e)}, then resume the run: "
                            f"selfplay resume {ctx.rundir.path}") from None
        raise
    finally:
        try:
            ctx.pool.close()
        finally:
            ctx.rundir.unlock()
    print(f"\nFinished in {time.perf_counter() - start:.0f}s (this session). Metrics: {ctx.rundir.metrics_path}")
    print(format_table(rows, cfg.eval.headline_k if cfg.eval.samples else None))
    if decision.action == "stop":
        print(f"Stopped after iteration {decision.iteration}: " + "; ".join(decision.reasons))
    print(f"Best iteration: {decision.best_iteration} ({decision.metric} {decision.best_value:.1%}); "
          f"export it with: selfplay export {ctx.rundir.path} OUT_DIR")
    return rows, decision


def _mark_interrupted(rundir: RunDir) -> None:
    try:
        rundir.write_state(status="interrupted")
    except WriteError:  # the disk that stopped the run may refuse this too; the stage files tell the truth
        pass


def reopen(
    run_path: Path, overrides: list[str], allow_change: bool,
    checks: Mapping[str, Callable[..., None]] | None = None,
) -> RunContext:
    """Open an existing run with its frozen config, plus overrides."""
    rundir = RunDir(run_path).require()
    data = rundir.frozen_config().model_dump(mode="json")
    cfg = configlib.validate(configlib.apply_overrides(data, overrides), f"{rundir.config_path} + overrides")
    # The folder named on the command line is the run, wherever it has been moved since it started.
    return open_run(cfg, rundir.path, allow_change, checks)


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
