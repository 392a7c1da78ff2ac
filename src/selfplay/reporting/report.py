"""`report.html`: one self-contained page per run, with plots across iterations and the data's lineage.

Plots are drawn with matplotlib (Agg) and embedded as PNG data URIs; the page loads nothing from
outside, so it can be mailed or archived as one file. Model text is HTML-escaped, never interpreted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from selfplay.files import atomic_write_text
from selfplay.loop.rundir import STAGES, RunDir, load_records
from selfplay.records import Problem
from selfplay.reporting.html import esc as _esc
from selfplay.reporting.html import figure as _figure
from selfplay.reporting.html import pct as _pct
from selfplay.reporting.rl import rl_section, rl_steps
from selfplay.reporting.tensorboard import write_tensorboard
from selfplay.results import GUARDS, Evaluation

LINEAGE_ROWS = 25


def _iters(rows: list[dict[str, Any]]) -> list[int]:
    return [int(r["iteration"]) for r in rows]


def _line(ax, rows, key, label, band_key=None, **kw) -> None:
    pts = [(int(r["iteration"]), r[key], r.get(band_key) if band_key else None) for r in rows if r.get(key) is not None]
    if not pts:
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    (line,) = ax.plot(xs, ys, marker="o", label=label, **kw)
    bands = [p for p in pts if p[2]]
    if bands:
        ax.fill_between([p[0] for p in bands], [p[2][0] for p in bands], [p[2][1] for p in bands],
                        color=line.get_color(), alpha=0.15)


def _plots(rows: list[dict[str, Any]], pass_k: str | None, evals: dict[int, Evaluation]) -> list[str]:
    out = []
    sets = sorted({k.removesuffix("/accuracy") for r in rows for k in r if k.endswith("/accuracy")})

    def accuracy(ax):
        _line(ax, rows, "greedy_accuracy", "held-out greedy", "greedy_ci95")
        if pass_k:
            _line(ax, rows, pass_k, f"held-out {pass_k}", f"{pass_k}_ci95")
        for name in sets:
            _line(ax, rows, f"{name}/accuracy", name, f"{name}/ci95", linestyle="--")
        ax.set_ylim(0, 1)
        return "Accuracy (95% intervals shaded)"

    answer_rates = sorted({k for r in rows for k in r if k.endswith("/answer_rate")})

    def answer_form(ax):
        for key in answer_rates:
            _line(ax, rows, key, key.removesuffix("/answer_rate"))
        ax.set_ylim(0, 1.05)
        return "Control tasks: answers in the asked form (a fall is forgetting)"

    out.append(_figure(accuracy))
    if answer_rates:
        out.append(_figure(answer_form))

    def data(ax):
        xs = [int(r["iteration"]) for r in rows if "kept" in r]
        if xs:
            ax.bar([x - 0.2 for x in xs], [r["kept"] or 0 for r in rows if "kept" in r], width=0.4,
                   label="examples kept")
            ax.bar([x + 0.2 for x in xs], [r.get("problems_solved") or 0 for r in rows if "kept" in r], width=0.4,
                   label="training problems solved")
            ax.plot(xs, [r.get("contaminated", 0) for r in rows if "kept" in r], "rx", label="contaminated (dropped)")
        return "Training data per iteration"

    out.append(_figure(data))

    def diversity(ax):
        for key, label in (("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("self_bleu", "self-BLEU"),
                           ("near_duplicate_share", "near-duplicate share"), ("embedding_spread", "embedding spread")):
            _line(ax, rows, f"diversity/{key}", label)
        ax.set_ylim(0, 1.05)
        return "Diversity of held-out samples"

    out.append(_figure(diversity))

    def length(ax):
        pts = [(int(r["iteration"]), r["diversity/length_mean"], r.get("diversity/length_std", 0))
               for r in rows if r.get("diversity/length_mean") is not None]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=4,
                        label="mean ± std (sampled)")
        _line(ax, rows, "mean_length", "mean (greedy)")
        ax.set_ylabel("tokens")
        return "Completion length"

    out.append(_figure(length))

    if any(r.get("reward/proxy_pass_rate") is not None for r in rows):
        def reward(ax):
            _line(ax, rows, "reward/proxy_pass_rate", "proxy pass rate")
            _line(ax, rows, "reward/gold_pass_rate", "gold pass rate")
            _line(ax, rows, "reward/correlation", "proxy-gold correlation", linestyle=":")
            ax.set_ylim(-0.05, 1.05)
            return "Proxy vs gold (held-out samples)"

        out.append(_figure(reward))

    categories = sorted({c for e in evals.values() for c in e.categories.get("heldout", {})})
    if len(categories) > 1:
        def per_category(ax):
            for c in categories:
                pts = [(i, e.categories["heldout"][c]["accuracy"]) for i, e in sorted(evals.items())
                       if c in e.categories.get("heldout", {})]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c)
            ax.set_ylim(0, 1)
            return "Held-out greedy accuracy per category"

        out.append(_figure(per_category))

    def seconds(ax):
        bottom = [0.0] * len(rows)
        xs = _iters(rows)
        own = sorted({s for r in rows for s in (r.get("seconds") or {}) if s not in STAGES})  # a recipe's own stages
        for stage in (*STAGES, *own):
            vals = [(r.get("seconds") or {}).get(stage) or 0.0 for r in rows]
            if any(vals):
                ax.bar(xs, vals, bottom=bottom, label=stage)
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_ylabel("seconds")
        return "Wall time per stage"

    out.append(_figure(seconds))
    return out


def _guard_table(evals: dict[int, Evaluation]) -> str:
    head = "".join(f"<th>{g.replace('_', ' ')}</th>" for g in GUARDS)
    body = []
    for i, e in sorted(evals.items()):
        cells = []
        for g in GUARDS:
            guard = e.guard(g)
            status = guard.status if guard else "–"
            detail = "; ".join(guard.alarms + guard.notes) if guard else ""
            cells.append(f'<td class="{_esc(status).replace("/", "")}" title="{_esc(detail)}">{_esc(status)}</td>')
        action = e.decision.action if e.decision else "–"
        body.append(f"<tr><td>{i}</td>{''.join(cells)}<td>{_esc(action)}</td></tr>")
    return (f"<table><tr><th>iter</th>{head}<th>decision</th></tr>{''.join(body)}</table>")


def _messages(evals: dict[int, Evaluation]) -> str:
    """Alarms and notes, each message once with the iterations it appeared in."""
    seen: dict[tuple[str, str, str], list[int]] = {}
    for i, e in sorted(evals.items()):
        for g in GUARDS:
            guard = e.guard(g)
            if guard is None:
                continue
            for kind, texts in (("alarms", guard.alarms), ("notes", guard.notes)):
                for text in texts:
                    seen.setdefault((kind, g, text), []).append(i)
    items = []
    for (kind, g, text), iters in seen.items():
        which = f"iteration{'s' if len(iters) > 1 else ''} {', '.join(map(str, iters))}"
        css = ' class="alarm"' if kind == "alarms" else ""
        items.append(f"<li{css}>{which}, {g.replace('_', ' ')}: {_esc(text)}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else "<p>No alarms or notes.</p>"


def _metrics_table(rows: list[dict[str, Any]], pass_k: str | None) -> str:
    sets = sorted({k.removesuffix("/accuracy") for r in rows for k in r if k.endswith("/accuracy")})
    head = ["iter", "greedy acc", "95% CI"] + ([pass_k] if pass_k else []) + sets + [
        "kept", "contaminated", "distinct-2", "self-BLEU", "mean len", "never solved"]
    lines = ["<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        ci = r.get("greedy_ci95") or [0, 0]
        cells = [r["iteration"], _pct(r["greedy_accuracy"]), f"{_pct(ci[0])}–{_pct(ci[1])}"]
        if pass_k:
            cells.append(_pct(r.get(pass_k)))
        cells += [_pct(r.get(f"{s}/accuracy")) + (f" (answers {_pct(r[f'{s}/answer_rate'])})"
                                                  if r.get(f"{s}/answer_rate") is not None else "") for s in sets]
        d2, sb = r.get("diversity/distinct_2"), r.get("diversity/self_bleu")
        cells += [r.get("kept", "–"), r.get("contaminated", "–"), f"{d2:.3f}" if d2 is not None else "–",
                  f"{sb:.3f}" if sb is not None else "–", f"{r.get('mean_length', 0):.1f}", r.get("never_solved", "–")]
        lines.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    return f"<table>{''.join(lines)}</table>"


def _judge_section(rows: list[dict[str, Any]]) -> str:
    """The judge's own quality per iteration, and a plain sentence when it cannot tell better from worse."""
    keys = [("judge/judge_mean_score", "judge mean score (train candidates)", "{:.2f}"),
            ("judge/pair_accuracy_gold", "pair accuracy vs gold", "pct"),
            ("judge/judge_gold_correlation", "judge-gold correlation (train)", "{:.2f}"),
            ("reward/correlation", "judge-gold correlation (held-out)", "{:.2f}"),
            ("judge/win_rate", "win rate vs iteration 0", "pct"), ("judge/lc_win_rate", "length-controlled", "pct"),
            ("judge/chosen_longer", "chosen is the longer", "pct"), ("judge/unparsed", "unparsed", "{}"),
            ("kept", "pairs", "{}")]
    if not any(k in r for r in rows for k, _, _ in keys[:2]):
        return ""

    def cell(value: Any, fmt: str) -> str:
        if value is None:
            return "–"
        return _pct(value) if fmt == "pct" else fmt.format(value)

    head = "<tr><th>iter</th>" + "".join(f"<th>{_esc(label)}</th>" for _, label, _ in keys) + "</tr>"
    body = "".join("<tr><td>{}</td>{}</tr>".format(r["iteration"], "".join(
        f"<td>{_esc(cell(r.get(k), fmt))}</td>" for k, _, fmt in keys)) for r in rows)
    verdict = ""
    accs = [r["judge/pair_accuracy_gold"] for r in rows if r.get("judge/pair_accuracy_gold") is not None]
    if accs and max(accs) < 0.6:
        verdict = (f'<p class="alarm">The judge cannot reliably tell the better answer from the worse one: of the '
                   f"pairs the gold checker can order, it chose the better answer {_pct(accs[-1])} of the time in "
                   f"the last iteration (50% is chance). Rising judge scores in this run do not mean better answers; "
                   f"a stronger judge is one setting away (<code>judge.model: PATH</code>).</p>")
    return f"<h2>Judge</h2>{verdict}<table>{head}{body}</table>"


def _human_section(evals: dict[int, Evaluation]) -> str:
    """The blind human evaluations beside gold and the judge, and where they point different ways."""
    rows = [(i, e.guards["human_eval"]) for i, e in sorted(evals.items()) if "human_eval" in e.guards]
    if not rows:
        return ""
    body = []
    for i, g in rows:
        lo, hi = g.get("ci95") or (None, None)
        directions = g.get("directions") or {}
        body.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in (
            i, g.get("against", ""), g.get("compared", 0), _pct(g.get("win_rate")),
            f"{_pct(lo)} – {_pct(hi)}" if lo is not None else "–",
            f"{g.get('wins', 0)} / {g.get('ties', 0)} / {g.get('losses', 0)}",
            ", ".join(f"{k}: {v}" for k, v in directions.items()) or "–", ", ".join(g.get("who") or []),
        )) + "</tr>")
    head = ("iter", "against iteration", "pairs", "people's win rate", "95% interval", "wins / ties / losses",
            "which way (people, gold, judge)", "who")
    lines = [f"<li class='alarm'>iteration {i}: {_esc(a)}</li>" for i, g in rows for a in g.alarms]
    lines += [f"<li>iteration {i}: {_esc(n)}</li>" for i, g in rows for n in g.notes]
    return ("<h2>People (blind evaluation)</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join(body) + "</table>" + (f"<ul>{''.join(lines)}</ul>" if lines else ""))


def _pseudo_label_section(evals: dict[int, Evaluation]) -> str:
    """The label-free run's audit: its majority answers against the hidden labels, per iteration."""
    found = {i: g for i, e in sorted(evals.items()) if (g := e.guard("pseudo_labels")) is not None
             and (g.figures.get("heldout") or g.figures.get("train"))}
    if not found:
        return ""
    unlabelled = any(note.startswith("no labels") for g in found.values() for note in g.notes)
    bins = [b["bin"] for g in found.values() for b in g.figures.get("calibration") or []]
    bins = list(dict.fromkeys(bins))
    head = ["iter", "pseudo-label acc", "confident acc", "trained-on acc (n)", *[f"acc at share {b} (n)" for b in bins],
            "tied problems", "problems with no answer", "wrong trained → fixed / stayed / spread / other",
            "held-out confidently wrong"]

    def pct_n(value: Any, n: Any) -> str:
        return f"{_pct(value)} ({n})" if n else "–"

    body = []
    for i, g in found.items():
        t, h, en = g.figures.get("train") or {}, g.figures.get("heldout") or {}, g.figures.get("entrenchment")
        cal = {b["bin"]: b for b in g.figures.get("calibration") or []}
        cells = [i, _pct(t.get("accuracy")), _pct(t.get("confident_accuracy")),
                 pct_n(t.get("trained_accuracy"), t.get("trained")),
                 *[pct_n(cal[b]["accuracy"], cal[b]["problems"]) if b in cal else "–" for b in bins],
                 t.get("ties", "–"), t.get("unreadable", "–"),
                 "{wrong_trained} → {fixed} / {stayed} / {spread} / {other}".format(**en) if en else "–",
                 f"{_pct(h['confidently_wrong_share'])} ({h['confidently_wrong']} of {h['problems']})"
                 if h.get("confidently_wrong_share") is not None else "–"]
        body.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    table = ("<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table>")
    intro = ("<p>The run trains on its own majority answers. Each row checks them against labels it never trains "
             "on: accuracy of the majority answers of the training problems (all, confident, trained on), "
             "accuracy by vote share (calibration), what became of last iteration's confident wrong majorities "
             "(entrenchment), and the share of held-out problems whose sampled majority is confident and wrong "
             "(its rise is the self-consistency ceiling).</p>")
    if unlabelled:
        intro = ('<p class="alarm">No labels: nothing can be audited against gold. The figures below are the votes '
                 "alone; held-out accuracy is agreement with the model's own sampled majority, not correctness.</p>")
    verdict = ""
    wrong = {i: t["trained_accuracy"] for i, g in found.items() if (t := g.figures.get("train"))
             and t.get("trained_accuracy") is not None and t["trained_accuracy"] < 0.5}
    if not unlabelled and wrong:
        said = ", ".join(f"iteration {i}: {_pct(a)}" for i, a in wrong.items())
        verdict = (f'<p class="alarm">Most pseudo-labels are wrong: of the training problems whose majority answer '
                   f"was trained on, the share that is right was under half ({said}). The run teaches the model its "
                   "own mistakes there; the majority is not a usable verifier for this model and task (a stronger "
                   "starting model, a higher verify.options.min_agreement, or labels).</p>")
    return f"<h2>Pseudo-labels</h2>{intro}{verdict}{table}"


def _short_model(model: str, run_path: Path) -> str:
    """A model path relative to the run folder when it lies inside it (iter-002/model), else as given."""
    try:
        return str(Path(model).resolve().relative_to(run_path.resolve()))
    except ValueError:
        return model


def _lineage(rundir: RunDir, evals: dict[int, Evaluation]) -> str:
    """Training records traced back: problem -> sample -> verdict -> iteration and model."""
    trained = [i for i in sorted(evals) if i > 0 and rundir.train_file(i) is not None]
    if not trained:
        if rl_steps(rundir):
            return ("<p>Online RL trains on its rollouts as it samples them: they and their rewards are in each "
                    "iteration's samples.jsonl and verdicts.jsonl, and the section Online RL shows the last ones.</p>")
        return "<p>No training data yet.</p>"
    i = trained[-1]
    train_path = rundir.problems_dir / "train.jsonl"
    problems = {p.id: p for p in load_records(train_path, Problem)} if train_path.is_file() else {}
    samples = {s["id"]: s for s in rundir.iteration_rows(i, "samples_file")}
    verdicts = {v["sample_id"]: v for v in rundir.iteration_rows(i, "verdicts_file")}
    path, cls = rundir.train_file(i)
    records = load_records(path, cls)
    rows = []
    for rec in records[:LINEAGE_ROWS]:
        p = problems.get(rec.problem_id)
        question, reference = (p.question, p.reference) if p else (rec.prompt, "")
        # An Example traces one sample; a Pair two (chosen, then rejected), one row each.
        for sid, text in zip(rec.sample_ids, rec.texts, strict=True):
            s, v = samples.get(sid, {}), verdicts.get(sid, {})
            rows.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in (
                rec.problem_id, question, reference, sid, v.get("answer"), v.get("score"),
                v.get("verifier"), rec.iteration, _short_model(str(s.get("model", "")), rundir.path),
            )) + f"<td><pre>{_esc(text)}</pre></td></tr>")
    head = ("problem", "question", "reference", "sample", "answer", "score", "verifier", "iteration", "sampled by",
            "completion (trained on)")
    shown = min(len(records), LINEAGE_ROWS)
    return (f"<p>Iteration {i}: the first {shown} of {len(records)} training records "
            f"(<code>{_esc(path)}</code>).</p><table><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 7px;
vertical-align:top;text-align:left}th{background:#f3f3f3}pre{white-space:pre-wrap;margin:0;max-width:32em}
.plots{display:flex;flex-wrap:wrap;gap:10px}.plots img{border:1px solid #eee}
td.ok{background:#e6f4e6}td.alarm{background:#f9d6d5;font-weight:bold}td.caught{background:#fff1c9}
td.note{background:#fff1c9}td.na{color:#888}li.alarm{color:#a00;font-weight:bold}.muted{color:#666}"""


def render(run_path: Path) -> str:
    rundir = RunDir(run_path).require()
    cfg = rundir.frozen_config()
    rows = rundir.collect_metrics()  # read only: a running process may own the run
    evals = rundir.evaluations()
    state = rundir.read_state()
    pass_k = f"pass@{cfg.eval.headline_k}" if cfg.eval.samples else None
    best = state.get("best_iteration")
    summary = [
        f"<b>status</b>: {_esc(state.get('status', 'not started'))}",
        f"<b>recipe</b>: {_esc(cfg.recipe)}", f"<b>model</b>: {_esc(cfg.model.path)}",
        f"<b>task</b>: {_esc(cfg.task.label)} ({cfg.task.train_size} train / "
        f"{cfg.task.eval_size} held-out)",
        f"<b>iterations evaluated</b>: {len(rows)} (cap {cfg.iterations})",
    ]
    scored_by = next((e.metrics["scored_by"] for e in evals.values() if e.metrics.get("scored_by")), None)
    if scored_by:  # a run with no labels: its held-out "accuracy" is not correctness
        summary.append(f"<b>held-out scored by</b>: {_esc(scored_by)}")
    if best is not None:
        summary.append(f"<b>best iteration</b>: {best} (export: <code>selfplay export {_esc(rundir.path)} OUT</code>)")
    label = "stopped" if state.get("status") == "stopped" else "ended"
    for reason in state.get("stop_reasons") or []:
        summary.append(f"<b>{label}</b>: {_esc(reason)}")
    plots = _plots(rows, pass_k, evals) if rows else []
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>selfplay report: {_esc(cfg.name)}</title>
<style>{CSS}</style></head><body>
<h1>selfplay run <code>{_esc(cfg.name)}</code></h1>
<p class="muted">{_esc(rundir.path.resolve())} &middot; report written {time.strftime('%Y-%m-%d %H:%M')}</p>
<p>{' &middot; '.join(summary)}</p>
<h2>Guards</h2>{_guard_table(evals)}{_messages(evals)}
<h2>Metrics</h2>{_metrics_table(rows, pass_k)}{_judge_section(rows)}{_human_section(evals)}
{_pseudo_label_section(evals)}
<h2>Plots</h2><div class="plots">{''.join(plots)}</div>{rl_section(rundir, evals)}
<h2>Lineage of the training data</h2>{_lineage(rundir, evals)}
<h2>Config</h2><pre>{_esc(rundir.config_path.read_text())}</pre>
</body></html>"""
    return body


def write_report(run_path: Path, out: Path | None = None) -> Path:
    """Write report.html (and TensorBoard scalars when TensorBoard is installed); return the page's path."""
    run_path = Path(run_path)
    page = render(run_path)
    out = Path(out) if out else run_path / "report.html"
    atomic_write_text(out, page)
    rundir = RunDir(run_path)
    write_tensorboard(rundir.collect_metrics(), run_path / "tensorboard", rl_steps(rundir))
    return out
