"""Benchmark: the default RFT config on the real embedded model, measured on a large held-out set.

    python benchmarks/rft.py                       # 3 iterations, 200 held-out problems (~1 hour on 2 CPU cores)
    python benchmarks/rft.py --iterations 1 --eval-size 50 --name quick    # a quick look
    python benchmarks/rft.py --smoke               # the same path on the tiny test model in a scratch folder: seconds

Prints a markdown table and writes it into docs/BENCHMARKS.md between the `rft` markers: held-out greedy
accuracy and pass@k with 95% confidence intervals per iteration, samples kept, wall time per stage, and the
share of wall time spent outside generation, training and evaluation (loop overhead). --smoke only prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.smoke import TINY_RUN, add_flags, entry, scratch, tiny_model  # noqa: E402
from selfplay.api import run  # noqa: E402
from selfplay.cli import _offline_env  # noqa: E402
from selfplay.config import load_config  # noqa: E402


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def table(rows: list[dict], k: int, overhead: float, total: float) -> str:
    out = [
        f"| iter | greedy acc | 95% CI | pass@{k} | 95% CI | mean len | kept | problems solved "
        "| generate s | verify s | filter s | train s | eval s |",
        "|---" * 13 + "|",
    ]
    for r in rows:
        s = r.get("seconds", {})
        lo, hi = r["greedy_ci95"]
        plo, phi = r.get(f"pass@{k}_ci95", [0, 0])

        def sec(name: str, s: dict = s) -> str:
            return f"{s[name]:.0f}" if s.get(name) is not None else "-"

        out.append(
            f"| {r['iteration']} | {r['greedy_accuracy']:.1%} | {lo:.1%}–{hi:.1%} | {r.get(f'pass@{k}', 0):.1%} "
            f"| {plo:.1%}–{phi:.1%} | {r['mean_length']:.1f} | {r.get('kept', '-')} | {r.get('problems_solved', '-')} "
            f"| {sec('generate')} | {sec('verify')} | {sec('filter')} | {sec('train')} | {sec('eval')} |"
        )
    out.append("")
    out.append(f"Wall time of this process {total / 60:.1f} min; loop overhead (outside the timed stages) "
               f"{overhead:.1f} s = {overhead / total:.2%} of wall time.")
    return "\n".join(out)


def write_section(text: str, marker: str = "rft") -> None:
    """Put `text` into docs/BENCHMARKS.md between the `<!-- MARKER:start/end -->` comments."""
    path = ROOT / "docs" / "BENCHMARKS.md"
    body = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\n{text}\n{end}"
    if start in body:
        body = re.sub(f"{re.escape(start)}.*?{re.escape(end)}", lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    path.write_text(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "rft-default.yaml"))
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--name", default="bench-rft")
    parser.add_argument("--output-dir", help="where the run's folder goes (runs/; with --smoke a scratch folder)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    add_flags(parser)
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()
    _offline_env()
    if args.smoke:  # one iteration on 4 held-out problems, whatever --iterations and --eval-size say
        args.iterations, args.eval_size, args.no_write = 1, 4, True
        args.output_dir = args.output_dir or str(scratch())
        args.model = tiny_model(args.model)
    cfg = load_config(Path(args.config), [
        *(TINY_RUN if args.smoke else []), *([f"model.path={args.model}"] if args.model else []),
        f"iterations={args.iterations}", f"task.eval_size={args.eval_size}",
        f"name={args.name}", f"output_dir={args.output_dir or ROOT / 'runs'}", *args.overrides,
    ])
    started_at = time.time()
    start = time.perf_counter()
    rows = run(cfg)
    total = time.perf_counter() - start
    # Overhead: what this process spent outside the stages' own timed work (model loads, file I/O, set-up).
    # Stages finished by an earlier process (a resumed benchmark) are not part of this process's wall time.
    staged = 0.0
    for summary in Path(cfg.run_dir).glob("iter-*/*.json"):
        if summary.stem in ("generate", "verify", "filter", "train", "eval") and summary.stat().st_mtime >= started_at:
            staged += json.loads(summary.read_text()).get("seconds") or 0.0
    overhead = max(0.0, total - staged)
    k = cfg.eval.headline_k
    command = " ".join(["--smoke"] if args.smoke else [f"--iterations {args.iterations} --eval-size {args.eval_size}",
                                                      *([f"--model {args.model}"] if args.model else [])])
    command += "".join(f" {o}" for o in args.overrides)
    embedded = cfg.model.path == "embedded:smollm2-135m-instruct"
    model = "the embedded SmolLM2-135M-Instruct" if embedded else f"`{cfg.model.path}`"
    text = "\n".join([
        f"### RFT on {model} ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `python benchmarks/rft.py {command}`",
        "",
        f"Machine: {machine()}.",
        "",
        f"Task: reasoning-gym `{cfg.task.dataset}` {json.dumps(cfg.task.params)}, {cfg.task.train_size} training "
        f"problems x {cfg.generate.samples_per_problem} samples, {cfg.task.eval_size} held-out problems; "
        f"train.init_from={cfg.train.init_from}, {cfg.train.method}, {cfg.train.epochs:g} epochs.",
        "",
        table(rows, k, overhead, total),
    ])
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    entry(main)
