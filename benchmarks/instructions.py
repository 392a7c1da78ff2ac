"""How hard the `instructions` task is for a model: held-out pass rates at 1, 2 and 3 constraints per prompt.

    python benchmarks/instructions.py                         # the embedded model, 100 prompts, 192 new tokens
    python benchmarks/instructions.py --model runs/NAME/iter-002/model --constraints 0 --size 64 --cap 128
    python benchmarks/instructions.py --smoke                 # 4 prompts, 1 constraint, 8 tokens, tiny test model

Greedy answers (continuous backend) to held-out prompts, scored by IFEval's checkers: prompt- and
instruction-level accuracy, strict and loose, the share of answers that ran to the token cap, and each
instruction type's strict pass rate. `--constraints 0` means the task's default mix. Prints a JSON line per
setting as it finishes, then a Markdown table of them all (docs/guide.md, "How hard the instruction task is").
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

from benchmarks.smoke import add_flags, entry, tiny_model  # noqa: E402
from selfplay.cli import _offline_env  # noqa: E402


def table(rows: list[dict]) -> str:
    out = ["| constraints per prompt | prompts | prompt strict | prompt loose | instruction strict "
           "| instruction loose | answers at the cap |", "|---" * 7 + "|"]
    for r in rows:
        cells = [f"{r[k]:.1%}" if k in r else "–" for k in
                 ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose", "capped")]
        out.append(f"| {r['constraints']} | {r['prompts']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_flags(p)
    p.add_argument("--size", type=int, default=100, help="held-out prompts per setting")
    p.add_argument("--cap", type=int, default=192, help="max new tokens")
    p.add_argument("--constraints", default="1,2,3", help="constraints per prompt, comma-separated (0: the default)")
    args = p.parse_args()
    _offline_env()
    if args.smoke:
        args.model, args.size, args.cap, args.constraints = tiny_model(args.model), 4, 8, "1"
    try:
        ks = [int(x) for x in args.constraints.split(",")]
    except ValueError:
        p.error(f"--constraints {args.constraints}: expected whole numbers separated by commas, e.g. 1,2,3")
    from selfplay.generation import SamplingParams, build_generator, sample_batches
    from selfplay.models import placement, resolve_model_path
    from selfplay.tasks.instructions import InstructionsTask
    from selfplay.verifiers.ifeval import IfEvalVerifier, instruction_metrics, instruction_pass_rates

    gen = build_generator("continuous", resolve_model_path(args.model or "embedded:smollm2-135m-instruct"),
                          placement("cpu", "float32"), {})
    checker = IfEvalVerifier()
    rows = []
    for k in ks:
        params = {} if k == 0 else {"min_constraints": k, "max_constraints": k}
        problems = InstructionsTask(params, 0, args.size, seed=0).split().heldout
        start = time.perf_counter()
        greedy = SamplingParams(1, 0.0, 1.0, args.cap, 0)
        samples = [s for b in sample_batches(gen, problems, greedy, 64, desc=f"{k or 'default'}") for s in b]
        by_id = {q.id: q for q in problems}
        verdicts = [checker.verify(by_id[s.problem_id], s) for s in samples]
        rows.append({
            "constraints": k or "default", "prompts": len(samples),
            **{key: round(v, 3) for key, v in instruction_metrics(verdicts).items()},
            "capped": round(sum(s.finish_reason == "length" for s in samples) / len(samples), 3),
            "seconds": round(time.perf_counter() - start),
            "per_instruction_strict": {i: round(r["strict"], 2) for i, r in instruction_pass_rates(verdicts).items()},
        })
        print(json.dumps(rows[-1]), flush=True)
    gen.close()
    print(table(rows))


if __name__ == "__main__":
    entry(main)
