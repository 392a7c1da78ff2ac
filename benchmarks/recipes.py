"""Every recipe side by side: run each config under configs/ (or read finished runs) and print one table.

    python benchmarks/recipes.py --run star spin sft       # run those configs one after another, then the table
    python benchmarks/recipes.py runs/rft-default runs/bench-star ...   # the table from finished runs only
    python benchmarks/recipes.py --smoke                   # configs/star.yaml on the tiny test model: seconds
    python benchmarks/recipes.py --smoke --run spin sft    # ... or the configs named

A run is named bench-<config> (its folder under runs/). The table has, per run: the held-out gold accuracy
of the starting model and of the best iteration with its 95% interval, pass@k, the control task at the
start and the end, distinct-2 of the samples at the start and the end, the judge's agreement with gold
where the recipe has a judge, the recipe's own figure (STaR: problems the hint reached; SPIN: rejected
answers that were already right; CAI: gold pass rate before and after revision; distillation: the
teacher's pass rate), and the wall time summed over the stages. Run it with nothing else on the machine.
A config that cannot run here (configs/distill.yaml without its teacher's server) stops the benchmark with
`selfplay run`'s one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.smoke import TINY_RUN, add_flags, entry, fail, scratch, tiny_model  # noqa: E402

SMOKE_CONFIGS = ["star"]  # RFT's stages and one of its own (hinted retries); benchmarks/rft.py smokes rft-default


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _read(run: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import yaml

    missing = [name for name in ("config.yaml", "metrics.jsonl") if not (run / name).is_file()]
    if missing:
        fail(f"{run}: not a run folder with results (no {' or '.join(missing)})")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return cfg, rows


def _filter(run: Path, i: int) -> dict[str, Any]:
    path = run / f"iter-{i:03d}" / "filter.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def recipe_figure(recipe: str, run: Path, iterations: list[int]) -> str:
    """The figure that says what the recipe's own mechanism did, per iteration."""
    parts = []
    for i in iterations:
        f = _filter(run, i)
        if recipe == "star":
            parts.append(f"{f.get('problems_reached', 0)}/{f.get('unsolved', 0)} unsolved reached")
        elif recipe == "spin":
            parts.append(f"{f.get('rejected_correct', 0)}/{f.get('kept', 0)} rejected were right")
        elif recipe == "constitutional" and f.get("gold_pass_first") is not None:
            parts.append(f"gold {_pct(f['gold_pass_first'])}→{_pct(f['gold_pass_revised'])} after revision")
        elif recipe == "distill":
            parts.append(f"teacher passes {_pct(f.get('teacher_pass_rate'))}")
        elif recipe == "rft":
            parts.append(f"{f.get('problems_solved', 0)}/{f.get('problems', 0)} solved")
        elif recipe == "sft":
            parts.append(f"{f.get('demonstrations', 0)} demonstrations")
    return "; ".join(parts) or "–"


def judge_figure(rows: list[dict[str, Any]]) -> str:
    """Pair accuracy against gold and the judge-gold correlation, per trained iteration, where there is a judge."""
    parts = []
    for r in rows[1:]:
        acc, corr = r.get("judge/pair_accuracy_gold"), r.get("judge/judge_gold_correlation")
        if acc is not None or corr is not None:
            parts.append(f"{_pct(acc)} / {corr:+.2f}" if corr is not None else _pct(acc))
    return "; ".join(parts) or "–"


def row(run: Path) -> list[str]:
    cfg, rows = _read(run)
    ks = cfg["eval"]["pass_k"]
    k = (max(ks) if isinstance(ks, list) else ks) if cfg["eval"]["samples"] else None
    best = max(rows, key=lambda r: (r["greedy_accuracy"], -r["iteration"]))
    lo, hi = best["greedy_ci95"]
    controls = [key for key in rows[0] if key.startswith("control/") and key.endswith("/accuracy")]
    control = " ".join(f"{_pct(rows[0][c])}→{_pct(rows[-1].get(c))}" for c in controls) or "–"
    d2 = f"{rows[0].get('diversity/distinct_2', 0):.2f}→{rows[-1].get('diversity/distinct_2', 0):.2f}"
    seconds = sum(v or 0.0 for r in rows for v in (r.get("seconds") or {}).values())
    task = cfg["task"]["source"] if cfg["task"]["source"] != "reasoning_gym" else cfg["task"]["dataset"]
    trained = [r["iteration"] for r in rows[1:]]
    return [
        cfg["recipe"], f"`{run.name}`", task, str(len(rows) - 1),
        _pct(rows[0]["greedy_accuracy"]),
        f"{_pct(best['greedy_accuracy'])} (it {best['iteration']}) [{_pct(lo)}, {_pct(hi)}]",
        f"{_pct(rows[0].get(f'pass@{k}'))}→{_pct(best.get(f'pass@{k}'))}" if k else "–",
        control, d2, judge_figure(rows), recipe_figure(cfg["recipe"], run, trained), f"{seconds / 60:.1f} min",
    ]


HEAD = ["recipe", "run", "task", "iters", "held-out, start", "held-out, best [95% CI]", "pass@k start→best",
        "control start→end", "distinct-2 start→end", "judge vs gold (pair acc / corr)", "the recipe's own figure",
        "stage time"]


def table(runs: list[Path]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in runs]
    return "\n".join(lines)


def config_path(name: str) -> Path:
    config = ROOT / "configs" / f"{name}.yaml"
    if not config.is_file():
        known = " ".join(sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
        fail(f"--run {name}: there is no configs/{name}.yaml (configs: {known})")
    return config


def run_config(name: str, extra: list[str], output_dir: Path) -> Path:
    """`selfplay run configs/NAME.yaml` in its own process; its one-line error and exit status 2 pass through."""
    config = config_path(name)
    cmd = [sys.executable, "-m", "selfplay", "run", str(config), f"name=bench-{name}", f"output_dir={output_dir}",
           *extra]
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if code == 2:  # `selfplay run` printed what the user can fix on one line
        raise SystemExit(2)
    if code != 0:
        fail(f"configs/{name}.yaml: `selfplay run` failed with exit status {code} (its output is above)")
    print(f"{name}: {(time.perf_counter() - start) / 60:.1f} min wall", flush=True)
    return output_dir / f"bench-{name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="finished run folders to tabulate")
    ap.add_argument("--run", nargs="*", default=[], metavar="CONFIG", help="configs/NAME.yaml to run first")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every --run")
    ap.add_argument("--output-dir", type=Path, help="where the runs' folders go (runs/; with --smoke a scratch folder)")
    add_flags(ap)
    args = ap.parse_args()
    extra = [*([f"model.path={args.model}"] if args.model else []), *args.set]
    for name in args.run:  # every name checked before the first run starts
        config_path(name)
    if args.smoke:
        args.run = args.run or ([] if args.runs else SMOKE_CONFIGS)
        args.output_dir = args.output_dir or scratch()
        extra = [*TINY_RUN, f"model.path={tiny_model(args.model)}", *args.set] if args.run else []
    if not args.run and not args.runs:
        ap.error("give finished run folders, or configs to run with --run NAME ...")
    runs = [run_config(name, extra, args.output_dir or ROOT / "runs") for name in args.run] + list(args.runs)
    print(table(runs))


if __name__ == "__main__":
    entry(main)
