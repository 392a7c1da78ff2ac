"""Benchmark: label-free self-improvement (verify.verifier: majority) next to gold RFT, with the pseudo-label audit.

    python benchmarks/label_free.py                  # the three measurements below (~3 hours on 2 CPU cores)
    python benchmarks/label_free.py --only base      # one of them: base, from-rft, chain_sum
    python benchmarks/label_free.py --smoke          # the same path on the tiny test model in a scratch folder

1. base: configs/label-free.yaml (the default task, training labels hidden, the majority as verifier) next to
   configs/rft-default.yaml (the same task and sizes, trained on gold), from the base model.
2. from-rft: both again, two iterations each, starting from the gold run's iteration-1 model (model.path), where
   the majority is right more often: does label-free training still help once the easy gains are taken?
3. chain_sum: reasoning-gym chain_sum (2-3 terms of 1-2 digits) from the base model, label-free next to gold.

Prints, per measurement and iteration: held-out greedy accuracy of both runs, control-task accuracy, the
pseudo-label audit (majority accuracy against the hidden labels: all, confident, trained on; accuracy by vote
share), the held-out confidently-wrong share and the entrenchment counts; and writes them into docs/BENCHMARKS.md
between the `label_free` markers. --smoke runs base and chain_sum's label-free side and from-rft's on the tiny
random model, prints, and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.rft import machine, write_section  # noqa: E402
from benchmarks.smoke import TINY_RUN, add_flags, entry, scratch, tiny_model  # noqa: E402
from selfplay.api import run  # noqa: E402
from selfplay.cli import _offline_env  # noqa: E402
from selfplay.config import load_config  # noqa: E402
from selfplay.loop.rundir import RunDir  # noqa: E402

CHAIN_SUM = ["task.dataset=chain_sum", "task.params={min_terms: 2, max_terms: 3, min_digits: 1, max_digits: 2}"]
MEASUREMENTS = ("base", "from-rft", "chain_sum")


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def run_one(config: str, name: str, args: argparse.Namespace, extra: list[str]) -> Path:
    """One run of `config` (label-free or gold) with the benchmark's sizes; returns its folder."""
    cfg = load_config(ROOT / "configs" / config, [
        *(TINY_RUN if args.smoke else []), *([f"model.path={args.model}"] if args.model else []),
        f"iterations={args.iterations}", f"name={name}", f"output_dir={args.output_dir}", *extra, *args.overrides])
    print(f"\n== {name}: {config} {' '.join(extra)}", flush=True)
    run(cfg)
    return Path(cfg.run_dir)


def rows_of(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Per iteration: held-out accuracy, control accuracy, and the pseudo-label audit's figures."""
    out = {}
    for i, e in RunDir(run_dir).evaluations().items():
        pl = e.guard("pseudo_labels")
        f = pl.figures if pl else {}
        out[i] = {"acc": e.metrics["greedy_accuracy"], "controls": e.control_accuracy, "train": f.get("train") or {},
                  "heldout": f.get("heldout") or {}, "calibration": f.get("calibration") or [],
                  "entrenchment": f.get("entrenchment")}
    return out


def table(title: str, free: dict[int, dict[str, Any]], gold: dict[int, dict[str, Any]] | None) -> str:
    controls = sorted({c for r in free.values() for c in r["controls"]})
    head = ["iter", "held-out acc (label-free)", "held-out acc (gold RFT)",
            *[f"{c} (label-free / gold)" for c in controls], "pseudo-label acc", "confident acc",
            "trained-on acc (n)", "acc by vote share <50 / 50-75 / 75-100 / 100%", "held-out confidently wrong",
            "entrenched: wrong trained → fixed / stayed / spread / other"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for i, r in sorted(free.items()):
        g = (gold or {}).get(i)
        t, h, en = r["train"], r["heldout"], r["entrenchment"]
        cal = " / ".join(f"{_pct(b['accuracy'])} ({b['problems']})" for b in r["calibration"]) or "-"
        cells = [str(i), _pct(r["acc"]), _pct(g["acc"]) if g else "-",
                 *[f"{_pct(r['controls'].get(c))} / {_pct(g['controls'].get(c)) if g else '-'}" for c in controls],
                 _pct(t.get("accuracy")), _pct(t.get("confident_accuracy")),
                 f"{_pct(t.get('trained_accuracy'))} ({t.get('trained', '-')})" if t else "-", cal,
                 _pct(h.get("confidently_wrong_share")),
                 "{wrong_trained} → {fixed} / {stayed} / {spread} / {other}".format(**en) if en else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--only", choices=MEASUREMENTS, action="append", help="run only these measurements")
    parser.add_argument("--output-dir", help="where the runs' folders go (runs/; with --smoke a scratch folder)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    add_flags(parser)
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = parser.parse_args()
    _offline_env()
    if args.smoke:
        args.iterations, args.no_write = 1, True
        args.output_dir = args.output_dir or str(scratch())
        args.model = tiny_model(args.model)
    args.output_dir = args.output_dir or str(ROOT / "runs")
    wanted = args.only or list(MEASUREMENTS)
    start = time.perf_counter()
    sections = []
    gold_base: Path | None = None
    if "base" in wanted or "from-rft" in wanted:
        free = rows_of(run_one("label-free.yaml", "bench-lf-base", args, [])) if "base" in wanted else None
        gold_base = run_one("rft-default.yaml", "bench-lf-base-gold", args, [])
        if free is not None:
            sections.append(table("From the base model, default task (basic_arithmetic)", free, rows_of(gold_base)))
    if "from-rft" in wanted:
        start_model = RunDir(gold_base).model_of(1)
        two = [f"model.path={start_model}", f"iterations={1 if args.smoke else 2}"]
        free = rows_of(run_one("label-free.yaml", "bench-lf-from-rft", args, two))
        gold = None if args.smoke else rows_of(run_one("rft-default.yaml", "bench-lf-from-rft-gold", args, two))
        sections.append(table(f"From gold RFT's iteration-1 model (`{start_model}`), two iterations", free, gold))
    if "chain_sum" in wanted:
        free = rows_of(run_one("label-free.yaml", "bench-lf-chain-sum", args, CHAIN_SUM))
        gold = None if args.smoke else rows_of(run_one("rft-default.yaml", "bench-lf-chain-sum-gold", args, CHAIN_SUM))
        sections.append(table("chain_sum (2-3 terms of 1-2 digits), from the base model", free, gold))
    minutes = (time.perf_counter() - start) / 60
    given = [f"--iterations {args.iterations}", *[f"--only {w}" for w in args.only or []],
             *([f"--model {args.model}"] if args.model else []), *args.overrides]
    command = "--smoke" if args.smoke else " ".join(given)
    model = f"`{args.model}`" if args.model else "the embedded SmolLM2-135M-Instruct"
    text = "\n".join([
        f"### Label-free self-improvement on {model} ({time.strftime('%Y-%m-%d')})", "",
        f"Command: `python benchmarks/label_free.py {command}`", "", f"Machine: {machine()}; {minutes:.0f} min.", "",
        "Label-free: configs/label-free.yaml (training labels hidden, verify.verifier: majority, min_agreement 0.5); "
        "gold: configs/rft-default.yaml, the same task and sizes. Pseudo-label figures are the label-free run's "
        "majority answers checked against the hidden labels; n is the number of problems.", "",
        "\n\n".join(sections),
    ])
    print("\n" + text)
    if not args.no_write:
        write_section(text, marker="label_free")


if __name__ == "__main__":
    entry(main)
