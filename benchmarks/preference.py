"""Benchmark: Self-Rewarding (own judge, DPO) against RFT with the gold checker, on the instruction task.

    python benchmarks/preference.py                      # both runs at the benchmark size, then the judge check
    python benchmarks/preference.py --iterations 1 --train-size 24 --eval-size 32 --no-write   # a quick look
    python benchmarks/preference.py --smoke              # every part on the tiny test model, a scratch folder: seconds

Runs `configs/self-rewarding.yaml` at a larger size, and RFT on the same task, the same sizes and sampling
settings, with IFEval's checkers as its verifier: the upper bound that a checker buys. Both runs evaluate
IFBench's offline-checkable test prompts as a control task (never trained on). Then it measures the
judge itself on the base model's candidates for the training prompts: the constrained and the generate mode,
each against the gold checkers (pair accuracy, correlation, how often generate mode gives a score).

Writes the `preference` section of docs/BENCHMARKS.md: per iteration, held-out gold prompt-level accuracy
(95% interval), IFBench accuracy, general-knowledge control, the judge's mean score, judge-gold correlation,
pair accuracy, win rate against iteration 0 (and length-controlled), mean length, distinct-2, pairs made,
wall time per stage. --smoke and --no-write only print.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.rft import machine, write_section  # noqa: E402
from benchmarks.smoke import TINY_RUN, add_flags, entry, scratch, tiny_model  # noqa: E402
from selfplay.api import run  # noqa: E402
from selfplay.cli import _offline_env  # noqa: E402
from selfplay.config import load_config  # noqa: E402
from selfplay.loop.rundir import RunDir  # noqa: E402

CONFIG = ROOT / "configs" / "self-rewarding.yaml"
EMBEDDED = "embedded:smollm2-135m-instruct"
# On top of benchmarks/smoke.py's tiny run: greedy-only eval as the config has, short DPO inputs, one short judgement.
SMOKE = ["eval.samples=0", "guards.fresh_size=0", "train.max_prompt_length=64", "train.max_completion_length=8",
         "train.batch_size=2", "judge.batch_size=8", "judge.max_new_tokens=8", "judge.samples=1"]


def sizes(args) -> list[str]:
    ifbench = f"{{name: ifbench, source: ifbench, size: {args.ifbench_size}, one_shot: false}}"
    gk = (f"{{name: general_knowledge, path: 'builtin:general_knowledge', size: {4 if args.smoke else 60}, "
          "one_shot: false, verifier: contains}")
    return [*(TINY_RUN + SMOKE if args.smoke else []), *([f"model.path={args.model}"] if args.model else []),
            f"iterations={args.iterations}", f"task.train_size={args.train_size}", f"task.eval_size={args.eval_size}",
            f"guards.control=[{gk}, {ifbench}]", f"output_dir={args.out}"]


def rft_overrides() -> list[str]:
    """RFT on the same task and sampling: the gold checkers are its verifier, SFT on up to 2 passing answers."""
    return ["recipe=rft", "verify.verifier=auto", "train.init_from=base", "train.learning_rate=5.0e-4",
            "filter.max_per_problem=2", "guards.win_rate=off"]  # YAML reads off as false; the config maps it back


def _cell(value, fmt: str) -> str:
    if value is None:
        return "–"
    return f"{value:.1%}" if fmt == "pct" else fmt.format(value)


def table(run_dir: Path) -> str:
    rows = RunDir(run_dir).collect_metrics()
    head = ("| iter | held-out prompt acc (95% CI) | instr. acc | IFBench | general knowledge | judge mean | "
            "judge-gold corr (train) | pair acc vs gold | held-out judge-gold corr | win rate vs it. 0 | LC win rate "
            "| mean len | distinct-2 | pairs / examples | generate s | verify s | train s | eval s |")
    out = [head, "|---" * 18 + "|"]
    for r in rows:
        lo, hi = r["greedy_ci95"]
        s = r.get("seconds", {})

        def sec(name, s=s):
            return f"{s[name]:.0f}" if s.get(name) is not None else "–"

        out.append(" | ".join([
            f"| {r['iteration']}", f"{r['greedy_accuracy']:.1%} ({lo:.1%}–{hi:.1%})",
            _cell(r.get("instruction_strict"), "pct"), _cell(r.get("control/ifbench/accuracy"), "pct"),
            _cell(r.get("control/general_knowledge/accuracy"), "pct"), _cell(r.get("judge/judge_mean_score"), "{:.2f}"),
            _cell(r.get("judge/judge_gold_correlation"), "{:.2f}"), _cell(r.get("judge/pair_accuracy_gold"), "pct"),
            _cell(r.get("reward/correlation"), "{:.2f}"), _cell(r.get("judge/win_rate"), "pct"),
            _cell(r.get("judge/lc_win_rate"), "pct"), f"{r['mean_length']:.1f}",
            _cell(r.get("diversity/distinct_2"), "{:.3f}"), str(r.get("kept", "–")),
            sec("generate"), sec("verify"), sec("train"), f"{sec('eval')} |",
        ]))
    return "\n".join(out)


def judge_check(run_dir: Path, prompts: int, seed: int, model: str = EMBEDDED, smoke: bool = False) -> str:
    """Both judge modes on the base model's iteration-1 candidates, against the gold checkers."""
    from selfplay.config import JudgeConfig
    from selfplay.guards.reward_hacking import pearson
    from selfplay.loop.context import ModelPool, RunModels
    from selfplay.loop.rundir import load_records
    from selfplay.models import placement, resolve_model_path
    from selfplay.records import Problem, Sample
    from selfplay.verifiers import verify_all
    from selfplay.verifiers.ifeval import IfEvalVerifier
    from selfplay.verifiers.judge import LLMJudge, is_unparsed

    rd = RunDir(run_dir)
    problems = {p.id: p for p in load_records(rd.problems_dir / "train.jsonl", Problem)}
    samples = load_records(rd.iter_dir(1) / "samples.jsonl", Sample)
    chosen = sorted({s.problem_id for s in samples})
    random.Random(seed).shuffle(chosen)
    keep = set(chosen[:prompts])
    samples = [s for s in samples if s.problem_id in keep]
    items = [(problems[s.problem_id], s) for s in samples]
    gold = {v.sample_id: v.score for v in verify_all(IfEvalVerifier(), items)}
    base = resolve_model_path(model)
    short = {"max_new_tokens": 8, "samples": 1} if smoke else {}
    lines = ["| judge mode | candidates | scored | seconds | judge-gold correlation | pair accuracy vs gold "
             "(pairs gold orders) |", "|---|---|---|---|---|---|"]
    for mode in ("constrained", "generate"):
        pool = ModelPool(placement("cpu", "auto"), "continuous", {})
        try:
            judge = LLMJudge(JudgeConfig(mode=mode, **short), RunModels(pool, base), seed=seed)
            start = time.perf_counter()
            verdicts = judge.verify_many(items)
            seconds = time.perf_counter() - start
        finally:
            pool.release()
        scored = {v.sample_id: v.score for v in verdicts if not is_unparsed(v)}
        ids = [sid for sid in scored if sid in gold]
        corr = pearson([scored[i] for i in ids], [gold[i] for i in ids]) if len(ids) > 1 else None
        right = wrong = 0
        by_problem: dict[str, list[str]] = {}
        for sid in ids:
            by_problem.setdefault(sid.rsplit("/", 1)[0], []).append(sid)
        for group in by_problem.values():
            ranked = sorted(group, key=lambda i: -scored[i])
            best, worst = ranked[0], ranked[-1]
            if scored[best] == scored[worst]:
                continue
            right += gold[best] > gold[worst]
            wrong += gold[best] < gold[worst]
        acc = right / (right + wrong) if right + wrong else None
        lines.append(f"| {mode} | {len(items)} | {len(scored)} | {seconds:.0f} | {_cell(corr, '{:.2f}')} | "
                     f"{_cell(acc, 'pct')} ({right + wrong}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--train-size", type=int, default=64)
    p.add_argument("--eval-size", type=int, default=100)
    p.add_argument("--ifbench-size", type=int, default=100)
    p.add_argument("--judge-prompts", type=int, default=24, help="training prompts for the judge-mode check")
    p.add_argument("--out", help="where the runs' folders go (runs/; with --smoke a scratch folder)")
    p.add_argument("--only", choices=["self_rewarding", "rft", "judge"], help="run one part")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md as it is")
    add_flags(p)
    args = p.parse_args()
    _offline_env()
    if args.smoke:
        args.iterations, args.train_size, args.eval_size, args.ifbench_size, args.judge_prompts = 1, 3, 3, 3, 2
        args.out, args.model, args.no_write = args.out or scratch(), tiny_model(args.model), True
    args.out = args.out or str(ROOT / "runs")
    started = time.strftime("%Y-%m-%d")
    runs = {"self_rewarding": ("bench-self-rewarding", []), "rft": ("bench-rft-instructions", rft_overrides())}
    walls = {}
    for key, (name, extra) in runs.items():
        if args.only and args.only != key:
            continue
        shutil.rmtree(Path(args.out) / name, ignore_errors=True)
        cfg = load_config(CONFIG, [*sizes(args), f"name={name}", *extra])
        start = time.perf_counter()
        run(cfg)
        walls[key] = time.perf_counter() - start
    command = "--smoke" if args.smoke else (
        f"--iterations {args.iterations} --train-size {args.train_size} --eval-size {args.eval_size} "
        f"--ifbench-size {args.ifbench_size}" + (f" --model {args.model}" if args.model else ""))
    parts = [f"Measured {started} on {machine()}.", "",
             f"Command: `python benchmarks/preference.py {command}`: "
             f"`configs/self-rewarding.yaml` at {args.train_size} training / {args.eval_size} held-out prompts, "
             f"{args.iterations} iterations, IFBench ({args.ifbench_size} prompts) as a control task.", ""]
    for key, (name, _) in runs.items():
        run_dir = Path(args.out) / name
        if not (run_dir / "metrics.jsonl").is_file():
            continue
        title = {"self_rewarding": "Self-Rewarding (own judge, constrained mode; DPO with LoRA)",
                 "rft": "RFT with the gold checkers as verifier (the upper bound a checker buys)"}[key]
        wall = f", {walls[key] / 60:.1f} min" if key in walls else ""
        parts += [f"**{title}**{wall}:", "", table(run_dir), ""]
    sr_dir = Path(args.out) / runs["self_rewarding"][0]
    saved = sr_dir / "judge-check.md"  # kept, so a later `--only rft` writes the whole section
    if (not args.only or args.only == "judge") and (sr_dir / "iter-001" / "samples.jsonl").is_file():
        saved.write_text(f"**The judge itself**: the base model judging its own iteration-1 candidates for "
                         f"{args.judge_prompts} training prompts, in each mode, against IFEval's checkers:\n\n"
                         f"{judge_check(sr_dir, args.judge_prompts, 0, args.model or EMBEDDED, args.smoke)}\n")
    if saved.is_file():
        parts += [saved.read_text()]
    text = "\n".join(parts)
    print(text)
    if not args.no_write:
        write_section(text, "preference")
    print(json.dumps({"walls_s": walls}))


if __name__ == "__main__":
    entry(main)
