"""User-side plugins, loaded by 'module:attr' the way a user's own would be: verifiers, a backend, a task, a recipe.

A randomly initialised model never writes a correct answer, so loop tests pass the first sample of
each problem: a real verifier object through the real plugin path, with a result tests can predict.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from selfplay.filters import best_vs_worst
from selfplay.generation import transformers_backend
from selfplay.records import Example, Pair, Problem, Sample, Verdict
from selfplay.tasks import Split, split_items
from selfplay.tasks.base import RawItem
from selfplay.training import train_sft


# -- verifiers: factory(options, run) -> Verifier ---------------------------------------------------
class PassFirst:
    name = "pass-first"

    def __init__(self, options=None, run=None):
        pass

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        passed = sample.id.endswith("/s0")
        return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)


class PassFirstFromBase(PassFirst):
    """Passes the first sample of each problem only while the run samples from its starting model."""

    name = "pass-first-from-base"

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        passed = sample.id.endswith("/s0") and "iter-" not in sample.model
        return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)


class PassHinted(PassFirst):
    """Passes only samples asked with a hint in the prompt (STaR's rationalizations): every plain try fails."""

    name = "pass-hinted"

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        passed = "Hint:" in problem.prompt
        return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)


class LengthProxy(PassFirst):
    """A planted reward hack: passes any completion of at least 5 tokens, whatever it says."""

    name = "length-proxy"

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        passed = sample.num_tokens >= 5
        return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)


class BestAtIterationOne(PassFirst):
    """A gold checker that scores iteration 1's model perfect and every other model zero.

    It stands in for a run whose quality peaks and then degrades, which a random model cannot do on its own.
    """

    name = "best-at-1"

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        passed = "iter-001" in sample.model
        return Verdict(sample.id, problem.id, float(passed), passed, None, self.name)


class BatchCounter:
    """A batch verifier that scores by sample index (s0 best) and logs each batch's size to `options['log']`."""

    name = "batch-counter"

    def __init__(self, options: dict, run):
        self.log = Path(options["log"])

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        return self.verify_many([(problem, sample)])[0]

    def verify_many(self, items: Sequence[tuple[Problem, Sample]]) -> list[Verdict]:
        with open(self.log, "a") as f:
            f.write(f"{len(items)}\n")
        out = []
        for problem, sample in items:
            k = int(sample.id.rsplit("/s", 1)[1])
            out.append(Verdict(sample.id, problem.id, 1.0 / (1 + k), k == 0, None, self.name))
        return out


class CurrentModelJudge:
    """Asks the run for the current model's generator, as a judge does; passes a sample when the model answers."""

    name = "current-judge"

    def __init__(self, options: dict, run):
        self.run = run

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        from selfplay.generation import SamplingParams, sample_batches

        gen = self.run.generator("current")
        judged = Problem(f"judge-{sample.id}", f"Is this right? {sample.completion}", "")
        [[reply]] = list(sample_batches(gen, [judged], SamplingParams(max_new_tokens=2), 1, desc="judge"))
        passed = sample.id.endswith("/s0")
        return Verdict(sample.id, problem.id, float(passed), passed, reply.completion, self.name,
                       critique=gen.model_name)


# -- a generation backend: factory(model_path, where, **options) -> Generator --------------------------
def recording_backend(model_path, where, log: str, delay: float = 0.0):
    """The transformers backend, recording the batch size of every call in the file `log`.

    `delay` seconds after each batch give a SIGKILL test a wide window to land in.
    """
    inner = transformers_backend(model_path, where)

    class Recording:
        model_name = inner.model_name

        def generate(self, problems, params, batch_size):
            import time

            with open(log, "a") as f:
                f.write(json.dumps({"batch_size": batch_size, "problems": len(problems), "n": params.n}) + "\n")
            for batch in inner.generate(problems, params, batch_size):
                yield batch
                time.sleep(delay)

        def close(self):
            with open(log, "a") as f:
                f.write(json.dumps({"closed": str(model_path)}) + "\n")
            inner.close()

    return Recording()


def slow_backend(model_path, where, delay: float = 0.2):
    """The continuous backend, `delay` seconds slower per batch (before it is handed back), so a test's SIGKILL
    lands while a Ray worker is busy generating; the samples are the continuous backend's own."""
    from selfplay.generation import continuous_backend

    inner = continuous_backend(model_path, where)

    class Slow:
        model_name = inner.model_name

        def generate(self, problems, params, batch_size):
            import time

            for batch in inner.generate(problems, params, batch_size):
                time.sleep(delay)
                yield batch

        def close(self):
            inner.close()

    return Slow()


# -- a task: factory(section, train_size, eval_size) -> Task -----------------------------------------
class CountingTask:
    """Open-ended prompts with no answer-line instruction, from the section's `params` ('count' problems)."""

    name = "counting"
    default_verifier = "math"

    def __init__(self, section, train_size: int, eval_size: int):
        self.count, self.seed = section.params["count"], section.seed
        self.train_size, self.eval_size = train_size, eval_size

    def split(self) -> Split:
        items = [RawItem(f"Count from {n} to {n + 3}.", f"{n + 3}", {"start": n}) for n in range(self.count)]
        return split_items(items, prefix="count", train_size=self.train_size, eval_size=self.eval_size,
                           seed=self.seed, one_shot=False, source="counting", instruction=None)


# -- a recipe: recipe(ctx, i, source) -> trained model path ----------------------------------------------
class ChosenOnlySFT:
    """A trainer over Pairs: supervised fine-tuning on the chosen side (what DPO's SFT warm-up does)."""

    record_type = Pair

    def train(self, init_path, records, out_dir, work_dir, cfg, where, seed):
        examples = [Example(p.id, p.problem_id, p.chosen_sample_id, p.prompt, p.chosen, p.iteration, p.messages)
                    for p in records]
        return train_sft(init_path, examples, out_dir, work_dir, cfg, where, seed)


def best_vs_worst_recipe(ctx, i: int, source: Path) -> Path:
    """Sample, judge, pair the best and worst sample of each problem, train on the pairs, plus a stage of its own."""
    cfg = ctx.cfg
    ctx.generate(i, ctx.train_problems, source, cfg.generate.params(cfg.generate.samples_per_problem, cfg.seed + i))
    ctx.verify(i, ctx.train_problems)
    ctx.select(i, ctx.train_problems, lambda p, s, v: best_vs_worst(p, s, v, iteration=i, drop_truncated=False), Pair)
    removed = ctx.review(i)
    ctx.stage(i, "notes", lambda: {"pairs_seen": sum(1 for _ in open(ctx.rundir.iter_dir(i) / "pairs.jsonl"))})
    return ctx.train(i, ChosenOnlySFT(), ctx.base_path, source, removed)


class SlowBatchCounter(BatchCounter):
    """BatchCounter that takes a moment per batch, so a test can kill the verify stage in the middle."""

    def verify_many(self, items):
        import time

        time.sleep(0.5)
        return super().verify_many(items)


def copy_recipe(ctx, i: int, source: Path) -> Path:
    """A recipe with no train stage: its own stage writes the model (a copy of `source`), and it returns that path."""
    import shutil

    out = ctx.rundir.iter_dir(i) / "copied"

    def copy() -> dict:
        shutil.copytree(source, out, dirs_exist_ok=True)
        return {"source": str(source)}

    ctx.stage(i, "copy", copy)
    return out


def coder_backend(model_path, where, slow_wrong: float = 0.0):
    """Stands in for a model that can write code (a random tiny model never does): for each problem, sample k is
    its reference solution when k is even, and a wrong program when k is odd (one that first sleeps `slow_wrong`
    seconds, so that a SIGKILL can land while the sandbox runs it). Greedy decoding gives the reference."""
    from selfplay.interfaces import Completion

    wrong = "```python\nimport time\ntime.sleep({delay})\ndef {name}(*args, **kwargs):\n    return None\n```"

    class Coder:
        model_name = str(model_path)

        def generate(self, problems, params, batch_size):
            for start in range(0, len(problems), batch_size):
                batch = []
                for p in problems[start : start + batch_size]:
                    texts = [p.meta["demonstration"] if k % 2 == 0 else
                             wrong.format(delay=slow_wrong, name=p.meta["entry_point"]) for k in range(params.n)]
                    batch.append((p, [Completion(t, len(t.split()), "stop") for t in texts]))
                yield batch

        def close(self):
            pass

    return Coder()


class Letters:
    """A reward with spread on a random model's output: the share of the completion's characters that are letters."""

    name = "letters"

    def __init__(self, options=None, run=None):
        pass

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        text = sample.completion
        score = sum(c.isalpha() for c in text) / max(1, len(text))
        return Verdict(sample.id, problem.id, score, score >= 0.5, None, self.name)


class TooHard:
    """A verifier no completion passes: the reward of a task far beyond the model (every group scores 0)."""

    name = "too-hard"

    def __init__(self, options=None, run=None):
        pass

    def verify(self, problem: Problem, sample: Sample) -> Verdict:
        return Verdict(sample.id, problem.id, 0.0, False, None, self.name)
