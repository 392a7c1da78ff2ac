"""Benchmark: online RL (recipe grpo) next to RFT, and where its time goes.

    python benchmarks/grpo.py --only rollouts       # rollout tokens/s: our continuous decoder vs trl's generate
    python benchmarks/grpo.py --only default        # configs/grpo.yaml next to configs/rft-default.yaml (~1 hour)
    python benchmarks/grpo.py --only chain_sum      # the same on chain_sum (2-3 terms of 1-2 digits)
    python benchmarks/grpo.py --only default --pass-k 1,8,64   # then pass@k at large k of base, best RFT, best GRPO
    python benchmarks/grpo.py --smoke               # every path on the tiny test model in a scratch folder

rollouts: `--updates` GRPO updates from the same start model, once with rl.rollout continuous and once with trl's own
sampling (transformers generate), same prompts and seeds; prints rollout tokens/s and the seconds of rollouts and
of updates for each.

default, chain_sum: both recipes as shipped on the task, one after the other, with the cumulative wall time at each
iteration, so they can be compared at equal wall time: held-out greedy accuracy, pass@4, never-solved problems, the
control tasks and distinct-2, and for grpo the last update's reward and KL. `--rft-iterations 5` gives RFT about
the wall time of configs/grpo.yaml's two iterations. With --pass-k, the base model, the best
RFT and the best GRPO iteration are evaluated again with enough samples for the largest k (unbiased estimator).

It prints markdown tables and writes nothing into docs/BENCHMARKS.md: the results there are written by hand, with
what they mean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.rft import machine  # noqa: E402
from benchmarks.smoke import TINY_RUN, add_flags, entry, scratch, tiny_model  # noqa: E402
from selfplay.api import evaluate_model, run  # noqa: E402
from selfplay.cli import _offline_env  # noqa: E402
from selfplay.config import load_config  # noqa: E402
from selfplay.loop.rundir import RunDir  # noqa: E402

CHAIN_SUM = ["task.dataset=chain_sum", "task.params={min_terms: 2, max_terms: 3, min_digits: 1, max_digits: 2}"]
MEASUREMENTS = ("rollouts", "default", "chain_sum")


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def rollouts(args: argparse.Namespace) -> str:
    """The same GRPO updates with each rollout sampler; their rollout and update times."""
    rows = []
    for sampler in ("continuous", "transformers"):
        cfg = load_config(ROOT / "configs" / "grpo.yaml", [
            *(TINY_RUN if args.smoke else []), *([f"model.path={args.model}"] if args.model else []),
            "iterations=1", f"rl.steps={args.updates}", f"rl.rollout={sampler}", f"name=bench-rollouts-{sampler}",
            f"output_dir={args.output_dir}", "eval.samples=0", "guards.control=[]", "guards.fresh_size=0",
            "task.eval_size=4" if args.smoke else "task.eval_size=20", *args.overrides])
        print(f"\n== rollouts with {sampler}", flush=True)
        run(cfg)
        s = json.loads((Path(cfg.run_dir) / "iter-001" / "rl.json").read_text())
        rows.append(f"| {sampler} | {s['rollout']} | {s['rollout_tokens']} | {s['rollout_seconds']:.1f} | "
                    f"{s['rollout_tokens_per_second']:.0f} | {s['update_seconds']:.1f} |")
    head = ["sampler asked", "sampler used", "rollout tokens", "rollout seconds", "rollout tokens/s",
            "update seconds (scoring and training)"]
    return "\n".join([f"**Rollouts, {args.updates} updates of configs/grpo.yaml from the same start model**", "",
                      "| " + " | ".join(head) + " |", "|---" * len(head) + "|", *rows])


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    out, elapsed = [], 0.0
    for r in RunDir(run_dir).collect_metrics():
        elapsed += sum(v or 0.0 for v in (r.get("seconds") or {}).values())
        out.append({**r, "elapsed": elapsed})
    return out


def compare(name: str, extra: list[str], args: argparse.Namespace) -> tuple[str, dict[str, Path]]:
    runs: dict[str, Path] = {}
    for recipe, config in (("rft", "rft-default.yaml"), ("grpo", "grpo.yaml")):
        # RFT's iterations are cheaper than GRPO's: more of them fill the same wall time.
        more = [f"iterations={args.rft_iterations}"] if recipe == "rft" and args.rft_iterations else []
        cfg = load_config(ROOT / "configs" / config, [
            *(TINY_RUN if args.smoke else []), *([f"model.path={args.model}"] if args.model else []),
            f"name=bench-grpo-{name}-{recipe}", f"output_dir={args.output_dir}", *extra, *more, *args.overrides])
        print(f"\n== {name}: {recipe} ({config} {' '.join(extra)})", flush=True)
        run(cfg)
        runs[recipe] = Path(cfg.run_dir)
    head = ["recipe", "iter", "wall time (cumulative)", "held-out greedy", "pass@4", "never solved",
            "controls", "distinct-2", "last reward / KL (grpo)"]
    lines = [f"**{name}**", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for recipe, path in runs.items():
        for r in _rows(path):
            controls = " ".join(f"{k.split('/')[1]} {_pct(v)}" for k, v in r.items()
                                if k.startswith("control/") and k.endswith("/accuracy"))
            rl = (f"{r['rl/reward_last']:.3f} / {r.get('rl/kl_last', 0):.3f}" if r.get("rl/reward_last") is not None
                  else "-")
            lines.append(f"| {recipe} | {r['iteration']} | {r['elapsed'] / 60:.1f} min | {_pct(r['greedy_accuracy'])} "
                         f"| {_pct(r.get('pass@4'))} | {r.get('never_solved', '-')} | {controls or '-'} | "
                         f"{r.get('diversity/distinct_2', 0):.2f} | {rl} |")
    return "\n".join(lines), runs


def pass_at_large_k(name: str, extra: list[str], runs: dict[str, Path], ks: list[int],
                    args: argparse.Namespace) -> str:
    """pass@k for each k of the base model and each recipe's best iteration, on the runs' own held-out split."""
    samples = max(ks)
    rows = []
    first = next(iter(runs.values()))
    models = {"base": RunDir(first).model_of(0)}
    for recipe, path in runs.items():
        best = json.loads((path / "state.json").read_text()).get("best_iteration", 0)
        models[f"{recipe} (iteration {best})"] = RunDir(path).model_of(best)
    for label, model in models.items():
        cfg = load_config(ROOT / "configs" / "rft-default.yaml", [
            *(TINY_RUN if args.smoke else []), *extra, f"eval.samples={samples}", f"eval.pass_k={ks}",
            *args.overrides])
        result, _ = evaluate_model(cfg, str(model), Path(args.output_dir) / f"pass-k-{name}-{len(rows)}", first)
        m = result["metrics"]
        rows.append(f"| {label} | {_pct(m['greedy_accuracy'])} | " + " | ".join(_pct(m.get(f"pass@{k}")) for k in ks)
                    + f" | {result['seconds'] / 60:.1f} min |")
    head = ["model", "greedy", *[f"pass@{k}" for k in ks], "eval time"]
    return "\n".join([f"**{name}: pass@k with {samples} samples per held-out problem**", "",
                      "| " + " | ".join(head) + " |", "|---" * len(head) + "|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=MEASUREMENTS, action="append", help="run only these measurements")
    parser.add_argument("--updates", type=int, default=3, help="updates per sampler in the rollouts measurement")
    parser.add_argument("--pass-k", help="after a comparison, pass@k of base, best RFT and best GRPO, e.g. 1,8,64")
    parser.add_argument("--rft-iterations", type=int,
                        help="RFT's iteration cap in the comparisons (e.g. 5, to fill GRPO's wall time)")
    parser.add_argument("--output-dir", help="where the runs' folders go (runs/; with --smoke a scratch folder)")
    add_flags(parser)
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = parser.parse_args()
    _offline_env()
    ks = sorted({int(k) for k in args.pass_k.split(",")}) if args.pass_k else []
    if args.smoke:
        args.updates, args.output_dir, args.model = 1, args.output_dir or str(scratch()), tiny_model(args.model)
        ks = ks or [1, 2]
    args.output_dir = args.output_dir or str(ROOT / "runs")
    # A smoke run shows each code path once: the chain_sum comparison is the default one's with other overrides.
    wanted = args.only or (["rollouts", "default"] if args.smoke else list(MEASUREMENTS))
    start = time.perf_counter()
    sections = []
    if "rollouts" in wanted:
        sections.append(rollouts(args))
    for name, extra in (("default", []), ("chain_sum", CHAIN_SUM)):
        if name in wanted:
            text, runs = compare(name, extra, args)
            sections.append(text)
            if ks:
                sections.append(pass_at_large_k(name, extra, runs, ks, args))
    print(f"\nMachine: {machine()}; {(time.perf_counter() - start) / 60:.0f} min; command: python benchmarks/grpo.py "
          f"{' '.join(sys.argv[1:])}\n\n" + "\n\n".join(sections))


if __name__ == "__main__":
    entry(main)
