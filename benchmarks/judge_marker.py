"""Benchmark: how much the judge's fence marker moves its scores, before and after the marker was seeded.

    python benchmarks/judge_marker.py          # the embedded model: 5 texts x 20 markers, 24 prompts x 4 candidates
    python benchmarks/judge_marker.py --smoke  # the same path on the tiny test model, in seconds; prints only

The full run is sized for about 15 minutes on 2 idle cores (it took 77 under a load of 4-8, docs/BENCHMARKS.md).

The judge (constrained mode, configs/self-rewarding.yaml's settings) once drew a fresh random marker for every
response it fenced, and a small model's score moves with the marker's tokens. Two measurements:

1. One text, many markers: each text judged under 20 markers drawn as the old judge drew them (spread, max - min,
   and standard deviation of its score), then judged 20 times, each a separate call, by the seeded judge.
2. What marker noise does to Self-Rewarding's pairs: the base model writes 4 candidates (temperature 0.7, top-p
   0.9, 128 new tokens) to each of N training prompts of the instruction task, and each prompt's best-vs-worst
   pair is taken by judge score, as the recipe does. (a) Per-call random markers, drawn R times: how often the
   pair changes between draws, and its accuracy against IFEval's checkers (the gold: of the pairs the checkers
   can order, the share where the judge's chosen answer is the better one). (b) The seeded marker, one per
   prompt, shared by its candidates: judged again under the same seed (the run's case), and under R run seeds.

The random markers of (1) and (2a) come from a seeded PRNG, so the benchmark repeats itself; they are
distributed as the old `secrets.token_hex(4)` draws were. Scores are spreads, not timings: the machine's load
does not change them. Writes the `judge_marker` section of docs/BENCHMARKS.md (not with --smoke or --no-write).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.generation import matmul_gflops  # noqa: E402
from benchmarks.rft import machine, write_section  # noqa: E402
from benchmarks.smoke import add_flags, entry, tiny_model  # noqa: E402
from selfplay.cli import _offline_env  # noqa: E402

# Texts of (1) besides the first candidates of (2): the case of the issue, and a better answer to it.
FIXED = [("What is the capital of France?", "Paris is a city."),
         ("What is the capital of France?", "The capital of France is Paris.")]


def random_fences(rng: random.Random):
    """The old judge's draw: a fresh random marker for every response, never one in the texts it holds."""
    from selfplay.verifiers.judge import Fence

    def draw(seed: int, key: str, *texts: str) -> Fence:
        while True:
            fence = Fence(f"response-{rng.getrandbits(32):08x}")
            if not any(fence.marker in t for t in texts):
                return fence

    return draw


def load_watch() -> list[float]:
    """The 1-minute load average now and every 10 s after (other jobs share these cores): read it at the end."""
    seen = [os.getloadavg()[0]]

    def watch() -> None:
        while True:
            time.sleep(10)
            seen.append(os.getloadavg()[0])

    threading.Thread(target=watch, daemon=True).start()
    return seen


def judged(source, cfg, items, seed: int = 0, fence=None) -> dict[str, float]:
    """Score per sample id, by the run's judge (seeded fences unless `fence` is given)."""
    from selfplay.verifiers.judge import LLMJudge

    judge = LLMJudge(cfg, source, seed=seed) if fence is None else LLMJudge(cfg, source, seed=seed, fence=fence)
    return {v.sample_id: v.score for v in judge.verify_many(items)}


def spread(values: list[float]) -> tuple[float, float]:
    return max(values) - min(values), statistics.pstdev(values)


def one_text(source, cfg, texts, markers: int, rng: random.Random) -> list[dict]:
    """(1): each text's score under `markers` random markers, and judged `markers` times by the seeded judge."""
    from selfplay.records import Problem, Sample

    rows = []
    for n, (prompt, text) in enumerate(texts):
        problem = Problem(f"text{n}", prompt, "")
        copies = [(problem, Sample(f"text{n}/m{k}", problem.id, text, 0, "stop", "input")) for k in range(markers)]
        before = list(judged(source, cfg, copies, fence=random_fences(rng)).values())
        after = [judged(source, cfg, [item])[item[1].id] for item in copies]  # separate calls, as a re-run makes
        rows.append({"prompt": prompt, "text": text, "before": before, "after": after})
    return rows


def pairs_of(scores: dict[str, float], by_problem: dict[str, list[str]]) -> dict[str, tuple[str, str]]:
    """Each prompt's (best, worst) candidate by judge score, as the recipe pairs them; an exact tie makes none."""
    out = {}
    for pid, sids in by_problem.items():
        ranked = sorted(sids, key=lambda s: -scores[s])
        if scores[ranked[0]] > scores[ranked[-1]]:
            out[pid] = (ranked[0], ranked[-1])
    return out


def accuracy(pairs: dict[str, tuple[str, str]], gold: dict[str, float]) -> tuple[int, int]:
    """(right, ordered): of the pairs the gold checkers can order, how many the judge ordered their way."""
    right = sum(gold[b] > gold[w] for b, w in pairs.values())
    return right, sum(gold[b] != gold[w] for b, w in pairs.values())


def flips(draws: list[dict[str, tuple[str, str]]], prompts: list[str]) -> float:
    """Over every two draws, the share of prompts whose best-vs-worst pair is not the same."""
    changed = [sum(a.get(p) != b.get(p) for p in prompts) / len(prompts) for a, b in itertools.combinations(draws, 2)]
    return statistics.fmean(changed) if changed else 0.0


def pair_row(name: str, draws: list[dict[str, float]], by_problem, gold) -> str:
    """One condition's line: pairs, their accuracy against gold, how often they change, and the score noise."""
    pairs = [pairs_of(s, by_problem) for s in draws]
    accs = [accuracy(p, gold) for p in pairs]
    rates = [r / n for r, n in accs if n]
    noise = statistics.fmean(statistics.pstdev([d[s] for d in draws]) for s in draws[0]) if len(draws) > 1 else 0.0
    acc = (f"{statistics.fmean(rates):.1%} ({min(rates):.1%}–{max(rates):.1%})" if rates else "–")
    return (f"| {name} | {len(draws)} | {statistics.fmean(len(p) for p in pairs):.1f} | "
            f"{statistics.fmean(n for _, n in accs):.1f} | {acc} | {flips(pairs, list(by_problem)):.1%} | "
            f"{noise:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_flags(p)
    p.add_argument("--markers", type=int, default=20, help="(1): markers per text, and seeded re-judgings")
    p.add_argument("--prompts", type=int, default=24, help="(2): training prompts of the instruction task")
    p.add_argument("--candidates", type=int, default=4, help="(2): candidates per prompt")
    p.add_argument("--draws", type=int, default=4, help="(2): random-marker draws, and run seeds")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = p.parse_args()
    _offline_env()
    if args.smoke:
        args.markers, args.prompts, args.candidates, args.draws, args.max_new_tokens = 3, 2, 3, 2, 8
    model = tiny_model(args.model) if args.smoke else args.model or "embedded:smollm2-135m-instruct"

    from selfplay.config import load_config
    from selfplay.generation import SamplingParams, sample_batches
    from selfplay.loop.context import ModelPool, RunModels
    from selfplay.models import placement, resolve_model_path
    from selfplay.tasks import build_task
    from selfplay.verifiers.ifeval import IfEvalVerifier

    started, load, clock = time.strftime("%Y-%m-%d"), load_watch(), time.perf_counter()
    gflops = matmul_gflops(256, 5) if args.smoke else matmul_gflops()
    run_cfg = load_config(ROOT / "configs" / "self-rewarding.yaml", [f"task.train_size={args.prompts}"])
    cfg = run_cfg.judge  # 'current' is the model under test here: the base model judges its own candidates
    problems = build_task(run_cfg.task).split().train[: args.prompts]
    base = resolve_model_path(model)
    pool = ModelPool(placement("cpu", "float32"), "continuous", {})
    try:
        source = RunModels(pool, base)
        g = run_cfg.generate
        params = SamplingParams(args.candidates, g.temperature, g.top_p, args.max_new_tokens, 0)
        samples = [s for b in sample_batches(pool.generator(base), problems, params, 16, "candidates") for s in b]
        by_id = {q.id: q for q in problems}
        items = [(by_id[s.problem_id], s) for s in samples]
        gold = {v.sample_id: v.score for v in (IfEvalVerifier().verify(q, s) for q, s in items)}
        by_problem: dict[str, list[str]] = {}
        first: dict[str, str] = {}
        for s in samples:
            by_problem.setdefault(s.problem_id, []).append(s.id)
            first.setdefault(s.problem_id, s.completion)

        rng = random.Random(0)
        texts = one_text(source, cfg, FIXED + [(by_id[pid].prompt, first[pid]) for pid in list(first)[:3]],
                         args.markers, rng)
        random_draws = [judged(source, cfg, items, fence=random_fences(rng)) for _ in range(args.draws)]
        seeded = [judged(source, cfg, items, seed=s) for s in range(args.draws)]
        again = judged(source, cfg, items, seed=0)
    finally:
        pool.release()
    minutes, load_end = (time.perf_counter() - clock) / 60, os.getloadavg()[0]

    t1 = [f"| text (prompt: response) | random marker per call: mean | spread (max − min) | std "
          f"| seeded marker, judged {args.markers}×: score | spread |", "|---|---|---|---|---|---|"]
    for r in texts:
        cut = r["text"].replace("\n", " ").replace("|", "/")
        cut = cut if len(cut) <= 48 else cut[:45] + "..."
        prompt = r["prompt"] if len(r["prompt"]) <= 32 else r["prompt"][:29] + "..."
        (b_spread, b_std), (a_spread, _) = spread(r["before"]), spread(r["after"])
        t1.append(f"| {prompt}: {cut} | {statistics.fmean(r['before']):.3f} | {b_spread:.3f} | {b_std:.3f} "
                  f"| {r['after'][0]:.3f} | {a_spread:.3g} |")
    gaps = [max(seeded[0][s] for s in sids) - min(seeded[0][s] for s in sids) for sids in by_problem.values()]
    t2 = ["| judge | draws | pairs per draw | pairs gold orders | pair accuracy vs gold, mean (range) "
          "| pairs changed between two draws | score noise per candidate (std across draws) |",
          "|---|---|---|---|---|---|---|"]
    t2 += [pair_row("random marker per call, per candidate (before)", random_draws, by_problem, gold),
           pair_row("seeded marker per prompt, judged again under seed 0 (after)", [seeded[0], again], by_problem,
                    gold),
           pair_row(f"seeded marker per prompt, run seeds 0–{args.draws - 1}", seeded, by_problem, gold)]
    text = "\n".join([
        f"Measured {started} on {machine()}; fp32 matmul {gflops:.0f} GFLOP/s; 1-minute load average "
        f"{load[0]:.1f} at the start, {max(load + [load_end]):.1f} at its peak, {load_end:.1f} at the end (other jobs "
        f"shared the cores; the figures are score spreads, which load does not change); {minutes:.1f} min.", "",
        f"Command: `python benchmarks/judge_marker.py --markers {args.markers} --prompts {args.prompts} --candidates "
        f"{args.candidates} --draws {args.draws}`: model `{model}`, judge `configs/self-rewarding.yaml`'s "
        f"(constrained, batch {cfg.batch_size}).", "",
        f"**One text, many markers**: each text judged under {args.markers} random markers (the old judge), then "
        f"{args.markers} times, in separate calls, by the seeded judge (the last three are the first candidates "
        "of three training prompts):", "", *t1, "",
        f"**Best-vs-worst pairs**: {len(problems)} training prompts of the instruction task, {args.candidates} "
        f"candidates each ({len(samples)}), {args.max_new_tokens} new tokens; the median best−worst score gap "
        f"under the seeded judge is {statistics.median(gaps):.3f} (smallest {min(gaps):.3f}):", "", *t2,
    ])
    print(text, flush=True)
    if not (args.smoke or args.no_write):
        write_section(text, "judge_marker")


if __name__ == "__main__":
    entry(main)
