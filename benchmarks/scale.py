"""Benchmark: a run's stages on Ray workers next to the same stages in the driver's process.

    python benchmarks/scale.py                    # the default job, local then Ray 1 and 2 workers (~25 min)
    python benchmarks/scale.py --only overhead    # start-up, model load and per-problem overhead only
    python benchmarks/scale.py --only code        # configs/code-rft.yaml's verify stage, local and on 2 workers
    python benchmarks/scale.py --smoke            # every path on the tiny test model in a scratch folder

default: configs/rft-default.yaml for one iteration, four times: in the driver with its 2 torch threads; in the
driver with 1 thread (what one worker gets); on a cluster the run starts (scale.ray_address: local) with 1
worker of 1 CPU; with 2 workers of 1 CPU. Printed: the generate stage of iteration 1 and the evaluation stages
of iterations 0 and 1 (seconds), and whether the samples are the same files (they must be: each sample is
seeded by its problem and index).

overhead: on a local cluster with 1 worker, the seconds to start the cluster, start a worker (its process,
imports) and load the model on it, and the per-problem cost of a handout (a one-problem greedy handout, timed
on the worker and around the Ray call).

code: configs/code-rft.yaml's first iteration with the sandbox in the driver, then on 2 workers.

It prints markdown tables and writes nothing into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.rft import machine  # noqa: E402
from benchmarks.smoke import TINY_RUN, add_flags, entry, scratch, tiny_model  # noqa: E402
from selfplay.cli import _offline_env  # noqa: E402

SETTINGS = {
    "driver, 2 threads": [],
    "driver, 1 thread": [],  # OMP_NUM_THREADS=1 below
    "Ray, 1 worker x 1 CPU": ["scale.ray_address=local", "scale.workers=1", "scale.num_cpus=1"],
    "Ray, 2 workers x 1 CPU": ["scale.ray_address=local", "scale.workers=2", "scale.num_cpus=1"],
}
SMOKE_RAY = "Ray, 2 workers x 1 CPU"
MEASUREMENTS = ("default", "overhead", "code")


def _run(config: str, name: str, overrides: list[str], args: argparse.Namespace, threads: int | None = None) -> Path:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    out = Path(args.output_dir)
    cmd = [sys.executable, "-m", "selfplay", "run", str(ROOT / "configs" / config), f"name={name}",
           f"output_dir={out}", "iterations=1", *(TINY_RUN if args.smoke else []),
           *([f"model.path={args.model}"] if args.model else []), *overrides, *args.overrides]
    print(f"\n== {name}: {' '.join(overrides)}", flush=True)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return out / name


def _seconds(run: Path, i: int, stage: str) -> float:
    return json.loads((run / f"iter-{i:03d}" / f"{stage}.json").read_text())["seconds"]


def default(args: argparse.Namespace) -> str:
    rows, samples = [], {}
    # The smoke run shows the path once: the driver, and a cluster the run starts with 2 workers.
    wanted = {k: v for k, v in SETTINGS.items() if not args.smoke or k in ("driver, 2 threads", SMOKE_RAY)}
    for label, overrides in wanted.items():
        name = "bench-scale-" + label.replace(",", "").replace(" ", "-").replace("x-", "")
        run = _run("rft-default.yaml", name, overrides, args, threads=1 if "1 thread" in label else None)
        samples[label] = (run / "iter-001" / "samples.jsonl").read_bytes()
        gen, e0, e1 = _seconds(run, 1, "generate"), _seconds(run, 0, "eval"), _seconds(run, 1, "eval")
        rows.append(f"| {label} | {gen:.1f} | {e0:.1f} | {e1:.1f} | {gen + e0 + e1:.1f} |")
    same = len(set(samples.values())) == 1
    head = ["where", "generate, iteration 1 (s)", "eval, iteration 0 (s)", "eval, iteration 1 (s)", "sum (s)"]
    return "\n".join(["**configs/rft-default.yaml, one iteration**", "", "| " + " | ".join(head) + " |",
                      "|---" * len(head) + "|", *rows, "",
                      f"samples.jsonl byte for byte the same in all {len(samples)} runs: {'yes' if same else 'NO'}"])


def overhead(args: argparse.Namespace) -> str:
    import ray

    from selfplay.config import load_config
    from selfplay.models import resolve_model_path
    from selfplay.records import Problem, to_dict
    from selfplay.scale import Handout, RayWorkers

    cfg = load_config(ROOT / "configs" / "rft-default.yaml", [
        "scale.ray_address=local", "scale.workers=1", *([f"model.path={args.model}"] if args.model else [])])
    path = str(resolve_model_path(cfg.model.path))
    workers = RayWorkers(cfg.scale, "cpu", "float32", cfg.generate.backend, cfg.generate.options)
    greedy = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": cfg.eval.max_new_tokens, "seed": 0}
    problems = [Problem(f"p{i}", f"What is {i} + {i + 1}?", str(2 * i + 1)) for i in range(40)]
    try:
        t = time.perf_counter()
        workers._ensure()
        started = time.perf_counter() - t
        t = time.perf_counter()
        list(workers.run([Handout("w", "whoami", ())]))
        worker_up = time.perf_counter() - t
        t = time.perf_counter()
        list(workers.run([Handout("p0", "generate", (path, [to_dict(problems[0])], greedy, 64))]))
        first = time.perf_counter() - t
        # The same 20 problems decoded one at a time (greedy, batch 1), in 20 handouts and then in one: the
        # difference per problem is what a handout costs (Ray's call, pickling, the driver's loop)
        some = problems[:20]
        t = time.perf_counter()
        list(workers.run([Handout(p.id, "generate", (path, [to_dict(p)], greedy, 1)) for p in some]))
        single = (time.perf_counter() - t) / len(some)
        t = time.perf_counter()
        list(workers.run([Handout("all", "generate", (path, [to_dict(p) for p in some], greedy, 1))]))
        batched = (time.perf_counter() - t) / len(some)
    finally:
        workers.shutdown()
        if ray.is_initialized():
            ray.shutdown()
    return "\n".join([
        "**Ray overhead, one local worker of 1 CPU, the default job's model**", "",
        "| what | seconds |", "|---|---|",
        f"| start a local cluster (ray.init) | {started:.1f} |",
        f"| start a worker (process, imports) and get its first answer | {worker_up:.1f} |",
        f"| first handout: load the model on the worker, answer one problem | {first:.1f} |",
        f"| 20 problems in 20 handouts, decoded one at a time: per problem | {single * 1000:.0f} ms |",
        f"| the same 20 problems in one handout, one at a time: per problem | {batched * 1000:.0f} ms |",
        f"| overhead of a handout, per problem | {(single - batched) * 1000:.0f} ms |"])


def code(args: argparse.Namespace) -> str:
    rows = []
    for label, overrides in (("driver", []), ("Ray, 2 workers x 1 CPU", SETTINGS["Ray, 2 workers x 1 CPU"])):
        name = "bench-scale-code-" + ("local" if label == "driver" else "ray2")
        run = _run("code-rft.yaml", name, [*overrides, "scale.verify=ray"] if overrides else [], args)
        summary = json.loads((run / "iter-001" / "verify.json").read_text())
        rows.append(f"| {label} | {summary['samples']} | {summary['passed']} | {summary['seconds']:.1f} |")
    return "\n".join(["**configs/code-rft.yaml, the verify stage of iteration 1**", "",
                      "| where | samples | passed | seconds |", "|---|---|---|---|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=MEASUREMENTS, action="append", help="run only these measurements")
    parser.add_argument("--output-dir", help="where the runs' folders go (runs/; with --smoke a scratch folder)")
    add_flags(parser)
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = parser.parse_args()
    _offline_env()
    if args.smoke:
        args.output_dir, args.model = args.output_dir or str(scratch()), tiny_model(args.model)
    args.output_dir = args.output_dir or str(ROOT / "runs")
    wanted = args.only or (["default"] if args.smoke else list(MEASUREMENTS))
    start = time.perf_counter()
    sections = [{"default": default, "overhead": overhead, "code": code}[m](args) for m in wanted]
    print(f"\nMachine: {machine()}; {(time.perf_counter() - start) / 60:.0f} min; command: python benchmarks/scale.py "
          f"{' '.join(sys.argv[1:])}\n\n" + "\n\n".join(sections))


if __name__ == "__main__":
    entry(main)
