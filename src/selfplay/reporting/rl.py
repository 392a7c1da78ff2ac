"""The report's online-RL section: each policy update's figures, the over-optimisation curve and the rollouts.

It reads each iteration's rl-steps.jsonl (trl's figures per update, and the gold checker's pass rate on the same
rollouts) and the rollouts themselves (samples.jsonl, verdicts.jsonl). Model text is escaped.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from selfplay.files import read_json, read_jsonl
from selfplay.guards.rl_signal import STEPS_FILE
from selfplay.loop.rundir import RunDir
from selfplay.reporting.html import esc, figure, pct
from selfplay.results import Evaluation

ROLLOUT_ROWS = 16


def rl_steps(rundir: RunDir) -> list[dict[str, Any]]:
    """Every update of the run in order, each with its iteration and `x`, its number counted across iterations."""
    out: list[dict[str, Any]] = []
    for it_dir in rundir.iter_dirs():
        path = it_dir / STEPS_FILE
        if not path.is_file():
            continue
        i = rundir.iteration_of(it_dir)
        for row in read_jsonl(path):
            out.append({**row, "iteration": i, "x": len(out) + 1})
    return out


def _reward_keys(steps: list[dict[str, Any]]) -> list[str]:
    return sorted({k for s in steps for k in s if k.startswith("rewards/") and k.endswith("/mean")})


def _plots(steps: list[dict[str, Any]]) -> list[str]:
    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(s["x"], s[key]) for s in steps if s.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    def bounds(ax) -> None:  # where each iteration begins
        for before, s in pairwise(steps):
            if s["iteration"] != before["iteration"]:
                ax.axvline(s["x"] - 0.5, color="#999", lw=0.8, ls=":")

    def rewards(ax):
        for key in _reward_keys(steps):
            ax.plot(*series(key), label=key.removeprefix("rewards/").removesuffix("/mean"))
        if any("gold" in s for s in steps):
            ax.plot(*series("gold"), label="gold pass rate (never trained on)", color="black", ls="--")
        bounds(ax)
        return "Reward per update (rollout mean)"

    def kl_entropy(ax):
        if any("kl" in s for s in steps):
            ax.plot(*series("kl"), label="KL to the iteration's start model")
        ax.plot(*series("entropy"), label="entropy")
        bounds(ax)
        return "KL and entropy per update"

    def signal(ax):
        ax.plot(*series("frac_reward_zero_std"), label="groups with no reward spread")
        ax.plot(*series("completions/clipped_ratio"), label="completions cut at the cap")
        ax.plot(*series("clip_ratio/region_mean"), label="clipped ratio (PPO clip)")
        ax.set_ylim(-0.02, 1.02)
        bounds(ax)
        return "Signal per update"

    def length(ax):
        ax.plot(*series("completions/mean_length"), label="mean completion length (tokens)")
        bounds(ax)
        return "Completion length per update"

    out = [figure(rewards, "update"), figure(kl_entropy, "update"), figure(signal, "update"),
           figure(length, "update")]
    if any("kl" in s for s in steps) and any("gold" in s for s in steps):
        def overoptimisation(ax):
            for key in _reward_keys(steps)[:1] or ["reward"]:
                xs = [s["kl"] for s in steps if s.get("kl") is not None and s.get(key) is not None]
                ax.plot(xs, [s[key] for s in steps if s.get("kl") is not None and s.get(key) is not None],
                        marker=".", label=f"proxy: {key.removeprefix('rewards/').removesuffix('/mean')}")
            pts = [(s["kl"], s["gold"]) for s in steps if s.get("kl") is not None and s.get("gold") is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color="black", ls="--", label="gold")
            return "Proxy and gold against KL (over-optimisation)"

        out.append(figure(overoptimisation, "KL to the iteration's start model", integer_x=False))
    return out


def _pair(figures: dict[str, Any], key: str, fmt=lambda v: f"{v:.3f}") -> str:
    a, b = figures.get(f"{key}_first"), figures.get(f"{key}_last")
    return f"{fmt(a)} → {fmt(b)}" if a is not None and b is not None else "–"


def _table(rundir: RunDir, evals: dict[int, Evaluation]) -> str:
    head = ["iter", "updates", "reward first → last", "gold first → last", "KL last", "entropy first → last",
            "no-spread groups", "cut at cap", "rollout tokens/s", "rollout / update seconds", "held-out accuracy"]
    body = []
    for i, e in sorted(evals.items()):
        g = e.guard("rl")
        if g is None or not g.figures.get("steps"):
            continue
        f = g.figures
        summary_path = rundir.iter_dir(i) / "rl.json"
        summary = read_json(summary_path) if summary_path.is_file() else {}
        tps = summary.get("rollout_tokens_per_second")

        kl = f"{f['kl_last']:.4f}" if "kl_last" in f else "–"
        cells = [i, f["steps"], _pair(f, "reward"), _pair(f, "gold", pct), kl,
                 _pair(f, "entropy"), pct(f.get("zero_spread_share")), pct(f.get("truncated_share")),
                 f"{tps:.0f} ({summary.get('rollout')})" if tps else "–",
                 f"{summary.get('rollout_seconds', 0):.0f} / {summary.get('update_seconds', 0):.0f}"
                 if summary.get("rollout_seconds") is not None else "–", pct(e.metrics.get("greedy_accuracy"))]
        body.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table>"


def _rollouts(rundir: RunDir, steps: list[dict[str, Any]]) -> str:
    """The last logged update's rollouts: what the policy wrote and what each reward gave it."""
    if not steps:
        return ""
    i, step = steps[-1]["iteration"], int(steps[-1]["step"])
    it_dir = rundir.iter_dir(i)
    verdicts = {v["sample_id"]: v for v in rundir.iteration_rows(i, "verdicts_file")}
    rows = []
    for s in rundir.iteration_rows(i, "samples_file"):
        v = verdicts.get(s["id"]) or {}
        if (v.get("details") or {}).get("step") != step:
            continue
        d = v.get("details") or {}
        rewards = ", ".join(f"{k} {x:.3f}" if isinstance(x, (int, float)) else f"{k} –"
                            for k, x in (d.get("rewards") or {}).items())
        gold = {True: "pass", False: "fail"}.get(d.get("gold_passed"), "–")
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in (s["problem_id"], s["id"], rewards, gold,
                                                                        s["finish_reason"]))
                    + f"<td><pre>{esc(s['completion'])}</pre></td></tr>")
        if len(rows) >= ROLLOUT_ROWS:
            break
    if not rows:
        return ""
    head = ("problem", "rollout", "rewards", "gold", "ended", "completion")
    return (f"<p>Rollouts of update {step} of iteration {i} (the first {len(rows)}; all are in "
            f"<code>{esc(it_dir / 'samples.jsonl')}</code> and their rewards in verdicts.jsonl).</p><table><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def rl_section(rundir: RunDir, evals: dict[int, Evaluation]) -> str:
    """The section, or '' for a run with no RL updates."""
    steps = rl_steps(rundir)
    if not steps:
        return ""
    intro = ("<p>Each iteration is a series of policy updates on rollouts scored by the rewards. Per update: the mean "
             "reward of each reward function, the gold checker's pass rate on the same rollouts (never trained on), "
             "KL to the iteration's start model, entropy, the share of groups whose completions all got the same "
             "reward (they carry no gradient), and the share cut at the token cap. Where the proxy keeps rising "
             "while gold turns down, the policy is exploiting the proxy.</p>")
    plots = f'<div class="plots">{"".join(_plots(steps))}</div>'
    return f"<h2>Online RL</h2>{intro}{_table(rundir, evals)}{plots}{_rollouts(rundir, steps)}"
