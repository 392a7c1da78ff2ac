"""Benchmark: the over-optimisation curve. GRPO against a learned reward model, with gold watching.

    python benchmarks/overoptimisation.py                     # 300 prompts, 4 answers each, 40 updates (hours)
    python benchmarks/overoptimisation.py --prompts 120 --updates 20
    python benchmarks/overoptimisation.py --prompts 400 --answers 6 --constraints 1 --instructions IDS
                                                              # the run in docs/BENCHMARKS.md names its six IDS
    python benchmarks/overoptimisation.py --smoke             # the same path on the tiny test model, in seconds

1. Pairs ordered by a checker. The starting model answers `--prompts` instruction-following requests (the
   instruction task's training split, 1-2 IFEval constraints each) `--answers` times. IFEval's checkers score each
   answer by the share of its constraints followed. For each request whose answers differ, the best is chosen and
   the worst rejected.
2. A reward model trained on those pairs (`selfplay train-rm`'s code: trl's RewardTrainer, held-out accuracy).
   Below `--min-rm-accuracy` (60%) on its held-out pairs it stops here: RL against a proxy at chance shows no curve.
3. GRPO with that reward model as the only reward (configs/grpo.yaml's settings on the instruction task) for
   `--updates` updates. IFEval's checkers never train anything: they score every update's rollouts (gold) and the
   held-out answers.

It prints, update by update, the proxy (the reward model's mean score on the rollouts), gold (IFEval's pass rate on
the same rollouts) and the KL to the start model. Gold turning down while the proxy still climbs is
over-optimisation (Gao et al. 2022), and the reward-hacking guard's alarm fires on it. The report of the run
(runs/NAME/report.html) plots both against KL. Nothing is written into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.rft import machine  # noqa: E402
from benchmarks.smoke import TINY_RUN, add_flags, entry, fail, scratch, tiny_model  # noqa: E402
from selfplay.api import run  # noqa: E402
from selfplay.cli import _offline_env  # noqa: E402
from selfplay.config import load_config  # noqa: E402
from selfplay.files import read_jsonl  # noqa: E402
from selfplay.generation import build_generator, sample_batches  # noqa: E402
from selfplay.models import placement, resolve_model_path  # noqa: E402
from selfplay.preferences import PreferencePair, train_on_pairs  # noqa: E402
from selfplay.tasks import build_task  # noqa: E402
from selfplay.verifiers import build_verifier, verify_all  # noqa: E402


def ordered_pairs(cfg, answers: int) -> tuple[list[PreferencePair], dict]:
    """Best against worst answer of each training request, by the share of its constraints IFEval says it follows."""
    task = build_task(cfg.task)
    problems = task.split().train
    base = resolve_model_path(cfg.model.path)
    gen = build_generator(cfg.generate.backend, base, placement(cfg.model.device, cfg.model.dtype),
                          cfg.generate.options)
    try:
        samples = [s for b in sample_batches(gen, problems, cfg.generate.params(answers, cfg.seed + 7),
                                             cfg.generate.batch_size, desc="answers") for s in b]
    finally:
        gen.close()
    by_id = {p.id: p for p in problems}
    gold = build_verifier("ifeval", task.default_verifier)
    verdicts = verify_all(gold, [(by_id[s.problem_id], s) for s in samples])
    groups: dict[str, list] = {}
    for s, v in zip(samples, verdicts, strict=True):
        groups.setdefault(s.problem_id, []).append((v.score, s.completion))
    pairs = []
    for n, (pid, scored) in enumerate(groups.items(), start=1):
        best, worst = max(scored, key=lambda x: x[0]), min(scored, key=lambda x: x[0])
        if best[0] > worst[0] and best[1] != worst[1]:
            pairs.append(PreferencePair(by_id[pid].chat(), best[1], worst[1], n))
    figures = {"requests": len(problems), "answers": len(samples),
               "answers_passing": sum(v.passed for v in verdicts), "pairs": len(pairs)}
    return pairs, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=300, help="instruction requests to build pairs from")
    parser.add_argument("--answers", type=int, default=4, help="answers sampled per request")
    parser.add_argument("--updates", type=int, default=40, help="GRPO updates against the reward model")
    parser.add_argument("--instructions", help="comma-separated IFEval instruction ids to draw constraints from (all "
                        "22 by default); a few surface-visible ones give the reward model a learnable signal")
    parser.add_argument("--constraints", type=int, default=2, help="at most this many constraints per request (2)")
    parser.add_argument("--heldout", type=float, default=0.2,
                        help="share of the pairs held out to score the reward model (0.2)")
    parser.add_argument("--min-rm-accuracy", type=float, default=None,
                        help="stop before RL when the reward model ranks fewer held-out pairs right (0.6): a proxy "
                        "at chance cannot show over-optimisation, and RL here takes hours")
    parser.add_argument("--output-dir", help="where the reward model and the run go (runs/; with --smoke a scratch "
                        "folder)")
    add_flags(parser)
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for the run")
    args = parser.parse_args()
    _offline_env()
    allowed = [i.strip() for i in (args.instructions or "").split(",") if i.strip()]
    task_params = (f"{{min_constraints: 1, max_constraints: {args.constraints}"
                   + (f", instructions: [{', '.join(allowed)}]" if allowed else "") + "}")
    if args.smoke:
        # The tiny random model follows no constraint on purpose; "no commas" it follows by chance, sometimes.
        args.prompts, args.answers, args.updates = 12, 4, 2
        task_params = "{min_constraints: 1, max_constraints: 1, instructions: ['punctuation:no_comma']}"
        args.output_dir, args.model = args.output_dir or str(scratch()), tiny_model(args.model)
    if args.min_rm_accuracy is None:  # the smoke run's tiny model ranks by chance: no bar unless one is given
        args.min_rm_accuracy = 0.0 if args.smoke else 0.6
    out = Path(args.output_dir or ROOT / "runs")
    start = time.perf_counter()
    sizes = [*(TINY_RUN if args.smoke else []), *([f"model.path={args.model}"] if args.model else []),
             "task.source=instructions", f"task.params={task_params}", "task.one_shot=false",
             f"task.train_size={args.prompts}", "generate.max_new_tokens=" + ("24" if args.smoke else "96"),
             "verify.verifier=auto", "train.max_length=384", *args.overrides]
    cfg = load_config(ROOT / "configs" / "grpo.yaml", [*sizes, "name=bench-overopt", f"output_dir={out}"])
    pairs, built = ordered_pairs(cfg, args.answers)
    if len(pairs) < 2:
        fail(f"only {len(pairs)} pair(s): the answers did not differ by IFEval; raise --prompts or --answers")
    rm_dir = out / "bench-overopt-rm"
    rm = train_on_pairs(pairs, rm_dir, cfg, resolve_model_path(cfg.model.path), args.heldout,
                        extra={"built": built}, where="ordered pairs")
    if (rm["accuracy"] or 0.0) < args.min_rm_accuracy:
        fail(f"the reward model ranks {rm['accuracy'] or 0.0:.0%} of {rm['heldout_pairs']} held-out pairs right, under "
             f"--min-rm-accuracy {args.min_rm_accuracy:.0%}: a proxy that does not track gold cannot show it parting "
             f"from gold. Raise --prompts or --answers for more pairs ({rm_dir / 'rm_eval.json'})")
    rewards = f"[{{verifier: reward_model, options: {{path: '{rm_dir}'}}}}]"
    run_cfg = load_config(ROOT / "configs" / "grpo.yaml", [
        *sizes, "name=bench-overopt", f"output_dir={out}", "iterations=1", f"rl.steps={args.updates}",
        f"rl.rewards={rewards}"])
    run(run_cfg)
    it = Path(run_cfg.run_dir) / "iter-001"
    steps = read_jsonl(it / "rl-steps.jsonl")
    guard = json.loads((it / "eval.json").read_text())["guards"]["reward_hacking"]
    acc = "-" if rm["accuracy"] is None else f"{rm['accuracy']:.1%}"
    lines = [f"Pairs: {built['pairs']} from {built['requests']} requests x {args.answers} answers "
             f"({built['answers_passing']} of {built['answers']} answers pass IFEval strict); reward model held-out "
             f"accuracy {acc} on {rm['heldout_pairs']} pairs.", "",
             "| update | proxy (reward model, mean) | gold (IFEval pass rate on the rollouts) | KL |",
             "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['reward']:.3f} | {s.get('gold', float('nan')):.1%} | "
              f"{s.get('kl', float('nan')):.4f} |" for s in steps]
    lines += ["", f"Reward-hacking guard: {guard.get('status')}; " + ("; ".join(guard.get("alarms") or []) or
                                                                      "no alarm"),
              f"\nMachine: {machine()}; {(time.perf_counter() - start) / 60:.0f} min; report: "
              f"{Path(run_cfg.run_dir) / 'report.html'}"]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    entry(main)
