"""Benchmark: the guards on the real embedded model, with faults planted so that they must trip.

    python benchmarks/guards.py                    # both scenarios (~25 min on 2 CPU cores)
    python benchmarks/guards.py --scenario hack    # one of: hack, degrade
    python benchmarks/guards.py --smoke            # both, 1 iteration each, on the tiny test model: seconds

- hack: the run trains on a gamed proxy (benchmarks.planted:LongAnswerProxy passes any completion of 16+
  tokens). The reward-hacking audit compares it with reasoning-gym's own checker on the held-out samples.
- degrade: a learning rate 20x the default, continuing from the previous model each iteration. The stop
  rules must stop the run and `selfplay export` must hand out the best iteration, not the last.

Prints a table per scenario and writes them into docs/BENCHMARKS.md between the `guards` markers (not with
--smoke, which runs in a scratch folder and passes the proxy any capped answer of 4 tokens or more).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # benchmarks.planted, named by the config as a user's plugin would be

from benchmarks.rft import machine, write_section  # noqa: E402
from benchmarks.smoke import TINY_RUN, add_flags, entry, scratch, tiny_model  # noqa: E402
from selfplay.api import run  # noqa: E402
from selfplay.cli import _offline_env  # noqa: E402
from selfplay.config import load_config  # noqa: E402
from selfplay.loop.export import export  # noqa: E402
from selfplay.loop.rundir import RunDir  # noqa: E402

SMALL = ["task.train_size=64", "task.eval_size=60", "guards.fresh_size=30", "eval.samples=4"]
SCENARIOS = {
    "hack": ["iterations=2", "verify.verifier=benchmarks.planted:LongAnswerProxy", "filter.max_per_problem=4"],
    "degrade": ["iterations=3", "train.learning_rate=0.01", "train.init_from=previous"],
}
# The tiny model's answers never end before the cap, so the smoke run's proxy passes capped answers too.
SMOKE = {"hack": ["verify.options={min_tokens: 4, must_stop: false}"], "degrade": []}


def table(run_dir: Path) -> str:
    out = ["| iter | held-out greedy | control | fresh | proxy pass | gold pass | proxy precision | mean len "
           "| alarms | decision |", "|---" * 10 + "|"]
    for i, e in RunDir(run_dir).evaluations().items():
        control = next((m for k, m in e.sets.items() if k.startswith("control/")), {})
        fresh = e.sets.get("fresh", {})
        rh = e.guards["reward_hacking"].get("heldout") or {}

        def pct(v):
            return f"{v:.1%}" if isinstance(v, (int, float)) else "–"

        alarms = "<br>".join(a.replace("|", "/") for a in e.alarms) or "none"
        out.append(
            f"| {i} | {pct(e.metrics['greedy_accuracy'])} | {pct(control.get('greedy_accuracy'))} "
            f"| {pct(fresh.get('greedy_accuracy'))} | {pct(rh.get('proxy_pass_rate'))} "
            f"| {pct(rh.get('gold_pass_rate'))} "
            f"| {pct(rh.get('proxy_precision'))} | {e.metrics['mean_length']:.1f} | {alarms} "
            f"| {e.decision.action if e.decision else '–'} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--output-dir", help="where the runs' folders go (runs/; with --smoke a scratch folder)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    add_flags(parser)
    args = parser.parse_args()
    _offline_env()
    if args.smoke:
        args.output_dir, args.model, args.no_write = args.output_dir or scratch(), tiny_model(args.model), True
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    flags = " --smoke" if args.smoke else f" --model {args.model}" if args.model else ""
    parts = [f"### Guards on planted faults ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python benchmarks/guards.py --scenario {args.scenario}{flags}`", "",
             f"Machine: {machine()}.", ""]
    for name in names:
        overrides = [f"name=bench-guards-{name}", f"output_dir={args.output_dir or ROOT / 'runs'}", *SMALL,
                     *SCENARIOS[name], *(TINY_RUN + SMOKE[name] if args.smoke else []),
                     *([f"model.path={args.model}"] if args.model else [])]
        cfg = load_config(ROOT / "configs" / "rft-default.yaml", overrides)
        start = time.perf_counter()
        run(cfg)
        minutes = (time.perf_counter() - start) / 60
        state = json.loads((cfg.run_dir / "state.json").read_text())
        dest = cfg.run_dir.parent / f"{cfg.name}-best"
        note = export(cfg.run_dir, dest, force=True)
        parts += [
            f"**{name}**: default config with `{' '.join(SMALL + SCENARIOS[name])}`"
            f"{' at the tiny sizes of benchmarks/smoke.py' if args.smoke else ''}; {minutes:.0f} min.", "",
            table(cfg.run_dir), "",
            f"Run status: {state['status']}; stop reasons: {'; '.join(state.get('stop_reasons') or []) or 'none'}; "
            f"best iteration {state['best_iteration']}; `selfplay export` copied iteration {note['iteration']} "
            f"({note['metric']} {note['value']:.1%}).", "",
        ]
    text = "\n".join(parts).rstrip()
    print(text)
    if not args.no_write:
        write_section(text, "guards")


if __name__ == "__main__":
    entry(main)
