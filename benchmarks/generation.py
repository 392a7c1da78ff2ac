"""Benchmark: useful new tokens per second of every generation backend, side by side, on the real embedded model.

    python benchmarks/generation.py --quick     # batch 64, k = 8, 128 sequences: a few minutes; ratio on the last line
    python benchmarks/generation.py --smoke     # the same path on the tiny test model, batch 8, k = 2: seconds
    python benchmarks/generation.py             # batches 8/32/64/128, k = 1 and 8, 32 and 128 new tokens
    python benchmarks/generation.py --ablations # ... and int8 everywhere, and each step of continuous left out
    python benchmarks/generation.py --default-job   # `make run`'s job with each backend (about 35 min)

"Useful" tokens are the tokens of finished and unfinished completions, never padding or the rows a backend
keeps decoding after their end of sequence. Each (backend, setting) runs in a fresh process, so its peak
memory is its own. The prompts are the default task's (configs/rft-default.yaml: the one-shot exemplar, the
question and the answer-line instruction, with the chat template), sampled at temperature 0.8, top-p 0.95.
It compares the backends that run here without anything else: openai needs a server and vllm a CUDA GPU with
its own environment, so the default list leaves them out and says so on one line; naming one is an error.
The FLOP limit is this machine's measured fp32 matmul rate divided by 2 x parameters per new token: the
decode-only ceiling, which prefill and padding keep any backend under. The full run writes its table into
docs/BENCHMARKS.md between the `generation` markers; --quick and --smoke only print.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.rft import machine, write_section  # noqa: E402
from benchmarks.smoke import add_flags, entry, fail, tiny_model  # noqa: E402

DEFAULT = "continuous"
# Registered backends this benchmark cannot start by itself (it measures a local model on this machine's CPU).
NEEDS = {
    "openai": "needs a server (generate.options.base_url or launch)",
    "vllm": "needs a CUDA GPU and its own environment (selfplay/generation/vllm.py)",
}
# Variants of a backend, named `backend-variant` on the command line: its generate.options, and module constants
# of selfplay.generation.continuous set in the worker (the ablations that show each step's gain).
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "continuous-int8": ("continuous", {"quantize": "int8"}, {}),
    "continuous-noprefix": ("continuous", {}, {"MIN_PREFIX": 10**9}),  # every prompt prefilled whole
    "continuous-fullsort": ("continuous", {}, {"TOP_CANDIDATES": 10**9}),  # top-p sorts the vocabulary
}


@dataclass(frozen=True)
class Setting:
    model: str
    backend: str
    batch: int
    k: int
    max_new_tokens: int
    problems: int


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """This CPU's fp32 matmul rate, the ceiling every backend's decode works under."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def _run(setting: Setting) -> dict:
    """One setting in this (fresh) process: load, sample, count; the model load is not timed."""
    from selfplay.cli import _offline_env

    _offline_env()

    from selfplay.config import load_config
    from selfplay.generation import SamplingParams, build_generator, sample_batches
    from selfplay.models import placement, resolve_model_path
    from selfplay.tasks import build_task

    cfg = load_config(ROOT / "configs" / "rft-default.yaml")
    split = build_task(cfg.task).split()
    problems = (split.train + split.heldout)[: setting.problems]
    model_path = resolve_model_path(setting.model)
    backend, options, constants = VARIANTS.get(setting.backend, (setting.backend, {}, {}))
    import selfplay.generation.continuous as continuous

    for name, value in constants.items():
        setattr(continuous, name, value)
    gen = build_generator(backend, model_path, placement("cpu", "float32"), options)
    params = SamplingParams(setting.k, 0.8, 0.95, setting.max_new_tokens, seed=0)
    start = time.perf_counter()
    samples = [s for batch in sample_batches(gen, problems, params, setting.batch, desc=setting.backend)
               for s in batch]
    seconds = time.perf_counter() - start
    gen.close()
    return {
        "sequences": len(samples), "tokens": sum(s.num_tokens for s in samples), "seconds": seconds,
        "finished": sum(s.finish_reason == "stop" for s in samples) / max(1, len(samples)),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def run_isolated(setting: Setting) -> dict:
    """`_run` in a fresh interpreter, so each setting's peak memory and caches are its own."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(asdict(setting))],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 2:  # the worker's one line: a user's mistake, e.g. a model path that is not there
        print(proc.stderr.strip().splitlines()[-1], file=sys.stderr)
        raise SystemExit(2)
    if proc.returncode != 0:
        raise SystemExit(f"{setting} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def default_job(backends: list[str]) -> str:
    """The default job (configs/rft-default.yaml) run to the end with each backend, one after the other."""
    import tempfile

    from selfplay.loop.rundir import RunDir

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-default-") as tmp:
        for backend in backends:
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "selfplay", "run", str(ROOT / "configs" / "rft-default.yaml"),
                                   f"name={backend}", f"output_dir={tmp}", f"generate.backend={backend}"],
                                  capture_output=True, text=True, check=False)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"the default job with {backend} failed:\n{proc.stderr[-3000:]}")
            metrics = RunDir(Path(tmp) / backend).collect_metrics()
            staged = {stage: sum(m["seconds"].get(stage) or 0 for m in metrics)
                      for stage in ("generate", "train", "eval")}
            rows.append((backend, wall, staged, [m["greedy_accuracy"] for m in metrics],
                         [m.get("pass@4", 0) for m in metrics]))
            print(f"default job with {backend}: {wall:.0f} s", flush=True)
    out = ["| backend | wall time | generate s | eval s | train s | outside the stages | greedy accuracy by iteration "
           "| pass@4 by iteration |", "|---" * 8 + "|"]
    for backend, wall, staged, greedy, pass4 in rows:
        rest = wall - sum(staged.values())
        greedy_text, pass_text = (" → ".join(f"{x:.0%}" for x in xs) for xs in (greedy, pass4))
        out.append(f"| {backend} | {wall:.0f} s ({wall / 60:.1f} min) | {staged['generate']:.0f} "
                   f"| {staged['eval']:.0f} | {staged['train']:.0f} | {rest:.0f} s ({rest / wall:.1%}) "
                   f"| {greedy_text} | {pass_text} |")
    return "\n".join([
        f"### The default job with each backend ({time.strftime('%Y-%m-%d')})", "",
        "Command: `python benchmarks/generation.py --default-job` (each run: `selfplay run configs/rft-default.yaml "
        "generate.backend=B`, in a fresh process; the wall time includes starting Python and loading models)", "",
        f"Machine: {machine()}.", "", *out,
    ])


def parameters(model: str) -> int:
    """Parameters of the model, read from its safetensors header (tied weights stored once)."""
    from safetensors import safe_open

    from selfplay.models import resolve_model_path

    with safe_open(resolve_model_path(model) / "model.safetensors", "pt") as f:
        total = 0
        for key in f.keys():
            n = 1
            for dim in f.get_slice(key).get_shape():
                n *= dim
            total += n
    return total


def table(settings: list[Setting], results: list[dict], gflops: float, n_params: int) -> str:
    out = ["| backend | new tokens cap | batch | k | sequences | useful tokens | finished | seconds | useful tok/s "
           "| ratio to transformers | share of FLOP limit | peak RSS |", "|---" * 12 + "|"]
    base = {(s.batch, s.k, s.max_new_tokens): r for s, r in zip(settings, results, strict=True)
            if s.backend == "transformers"}
    for s, r in zip(settings, results, strict=True):
        rate = r["tokens"] / r["seconds"]
        ref = base.get((s.batch, s.k, s.max_new_tokens))
        ratio = f"{rate / (ref['tokens'] / ref['seconds']):.2f}" if ref else "–"
        share = f"{rate / (gflops * 1e9 / (2 * n_params)):.1%}"
        out.append(f"| {s.backend} | {s.max_new_tokens} | {s.batch} | {s.k} | {r['sequences']} | {r['tokens']} "
                   f"| {r['finished']:.0%} | {r['seconds']:.1f} | {rate:.1f} | {ratio} | {share} "
                   f"| {r['peak_rss_gb']:.2f} GB |")
    return "\n".join(out)


def main() -> None:
    from selfplay.generation import GENERATORS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 64, k = 8, 128 sequences; print only")
    add_flags(parser)
    runnable = sorted(b for b in GENERATORS if b not in NEEDS)
    parser.add_argument("--backends", nargs="+", choices=sorted(GENERATORS) + sorted(VARIANTS),
                        help=f"backends to compare (transformers always runs; default: {' '.join(runnable)}); "
                             "variants: " + ", ".join(VARIANTS))
    parser.add_argument("--ablations", action="store_true",
                        help="also run the variants at the headline batch (int8 runs at every setting of the grid)")
    parser.add_argument("--default-job", action="store_true",
                        help="run the default job with transformers and continuous instead (about 35 min)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one setting, as JSON, run by run_isolated
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_run(Setting(**json.loads(args.worker)))))
        return
    for name in args.backends or []:
        if name in NEEDS:
            fail(f"backend '{name}' {NEEDS[name]}, which this benchmark does not start; "
                 f"choose from {', '.join(runnable + sorted(VARIANTS))}")
    if args.backends is None:
        skipped = [name for name in sorted(GENERATORS) if name in NEEDS]
        if skipped:
            print(f"{Path(__file__).name}: skipped {'; '.join(f'{n}, which {NEEDS[n]}' for n in skipped)}", flush=True)
    backends = ["transformers", *[b for b in args.backends or runnable if b != "transformers"]]
    model = tiny_model(args.model) if args.smoke else args.model or "embedded:smollm2-135m-instruct"
    if args.default_job:
        text = default_job([b for b in backends if b not in VARIANTS])
        print(text)
        if not args.no_write:
            write_section(text, "default-job")
        return
    # (batch, k, max_new_tokens, problems); the ratios are printed at the headline (batch, k, max_new_tokens)
    headline = (8, 2, 8) if args.smoke else (64, 8, 32)
    if args.smoke:
        grid = [(8, 2, 8, 4)]
    elif args.quick:
        grid = [(64, 8, 32, 16)]
    else:
        grid = [(b, k, 32, 128 // k) for k in (1, 8) for b in (8, 32, 64, 128)]
        grid += [(64, 8, 128, 8), (64, 1, 128, 64)]  # long completions
    settings = [Setting(model, name, b, k, m, n) for b, k, m, n in grid for name in backends]
    if args.ablations:
        settings += [Setting(model, name, b, k, m, n) for b, k, m, n in grid for name in VARIANTS
                     if name not in backends and (b == headline[0] or name == "continuous-int8")]
    rank = {name: i for i, name in enumerate([*backends, *VARIANTS])}
    settings.sort(key=lambda s: (s.max_new_tokens, s.k, s.batch, rank[s.backend]))
    gflops = matmul_gflops(256, 5) if args.smoke else matmul_gflops()
    n_params = parameters(model)
    results = []
    for s in settings:
        results.append(run_isolated(s))
        r = results[-1]
        print(f"{s}: {r['tokens']} tokens in {r['seconds']:.1f}s = {r['tokens'] / r['seconds']:.1f} tok/s", flush=True)
    flags = "".join(f" --{f.replace('_', '-')}" for f in ("smoke", "quick", "ablations") if getattr(args, f))
    text = "\n".join([
        f"### Generation backends side by side ({time.strftime('%Y-%m-%d')})", "",
        f"Command: `python benchmarks/generation.py{flags}`", "",
        f"Machine: {machine()}; fp32 matmul measured at {gflops:.0f} GFLOP/s, so the decode-only limit for "
        f"{n_params / 1e6:.{0 if n_params > 1e7 else 2}f}M parameters is "
        f"{gflops * 1e9 / (2 * n_params):.0f} new tokens/s.", "",
        table(settings, results, gflops, n_params),
    ])
    print(text)
    if not (args.quick or args.smoke or args.no_write):
        write_section(text, "generation")
    rates = {s.backend: r["tokens"] / r["seconds"] for s, r in zip(settings, results, strict=True)
             if (s.batch, s.k, s.max_new_tokens) == headline}
    where = f"ratio at batch {headline[0]}, k {headline[1]}"
    for name in rates:
        if name not in ("transformers", DEFAULT):
            print(f"{where}: {name} / transformers = {rates[name] / rates['transformers']:.2f}")
    if DEFAULT in rates:  # the default backend (greedy output equal to generate's) last, as the headline
        print(f"{where}: {DEFAULT} / transformers = {rates[DEFAULT] / rates['transformers']:.2f}")


if __name__ == "__main__":
    entry(main)
