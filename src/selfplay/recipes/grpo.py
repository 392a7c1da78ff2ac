"""Online RL against the verifiers (GRPO, RLOO), one iteration:

`rl.steps` policy updates from the model the iteration starts from, with trl's GRPOTrainer (or RLOOTrainer),
then a merged checkpoint that the driver evaluates, guards, rolls back or exports as it does every recipe's.
Each update samples `rl.num_generations` completions for each of `rl.prompts_per_step` training problems,
scores them with the rewards (`rl.rewards`: any of our verifiers, weighted; the run's own verifier by default),
and moves the policy toward the completions that beat their group.

Everything the loop reads stays where it reads it: every rollout goes to the iteration's samples.jsonl and its
rewards to verdicts.jsonl (id `PROBLEM/rSTEPsK`), so lineage, diversity and the audits see RL's data as they see
RFT's; each update's figures go to rl-steps.jsonl (reward per function, groups with no reward spread,
lengths, truncation, entropy, KL, clip ratio, and the gold checker's pass rate on the same rollouts when the run
has one). A killed run resumes from the last trainer checkpoint and drops what it had logged after it.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.files import JsonlAppender, atomic_write_jsonl, recover_partial_jsonl
from selfplay.guards.rl_signal import STEPS_FILE
from selfplay.interfaces import SamplingParams
from selfplay.loop.context import RunContext
from selfplay.records import Problem, Sample, Verdict, to_dict
from selfplay.verifiers import Verifier, build_verifier, verify_all


def check(cfg: Any, task: Any, train_problems: Sequence[Problem]) -> None:
    """Refuse, before anything is written, what online RL cannot run with."""
    if cfg.review.every:
        raise UserError("review.every: recipe grpo trains on its rollouts as it samples them, so there is no "
                        "training set to review before training; set review.every: 0")
    if cfg.train.launcher != "local":
        raise UserError("train.launcher: recipe grpo trains in the run's process (its rollouts come from the live "
                        "policy); set train.launcher: local, and use trl's vLLM modes on GPUs (docs/guide.md#scale)")
    if cfg.generate.backend == "openai":
        raise UserError("generate.backend: openai cannot sample rollouts for recipe grpo (the policy changes every "
                        "step and its weights live in the trainer); use rl.rollout: vllm on a GPU, or continuous")
    if cfg.rl.rollout == "vllm" and cfg.model.device == "cpu":
        raise UserError("rl.rollout: vllm needs a CUDA GPU (model.device is cpu); use continuous")
    if cfg.rl.options:
        from selfplay.training.rl import check_options

        check_options(cfg.rl)
    per_step = cfg.rl.prompts_per_step
    if per_step > len(train_problems):
        raise UserError(f"rl.prompts_per_step: {per_step} is more than the {len(train_problems)} training problems")


def rollout_continuous(model, tokenizer, prompts: list[list[int]], params: SamplingParams, batch_size: int):
    """The rollout sampler for the CPU: our continuous decoder on the live policy (LoRA adapters included).

    None for a model it cannot run (not the Llama layout): trl's own sampling takes over.
    """
    from selfplay.generation.continuous import ContinuousGenerator, unsupported_reason

    reason = unsupported_reason(model)
    if reason is not None:
        print(f"rl.rollout continuous: {reason}; trl samples the rollouts with generate instead", flush=True)
        return None
    gen = ContinuousGenerator(model, tokenizer, "policy")
    out: list[list[list[int]] | None] = [None] * len(prompts)
    for ready in gen.generate_tokens(prompts, params, batch_size):
        for i, seqs in ready:
            out[i] = seqs
    return out


def _rollout(ctx: RunContext):
    """The sampler for rl.rollout (None leaves it to trl: its generate, or its vLLM modes)."""
    choice = ctx.cfg.rl.rollout
    if choice == "auto":
        choice = "continuous" if ctx.where.device == "cpu" else ("vllm" if _has_vllm() else "transformers")
    return choice, rollout_continuous if choice == "continuous" else None


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class RolloutLog:
    """The iteration's rollouts (samples), their rewards (verdicts) and each step's figures, appended as RL runs.

    Rows carry their step, so a resumed stage drops those after its checkpoint before it appends again.
    """

    def __init__(self, it_dir: Path, samples: str = "samples", verdicts: str = "verdicts"):
        self.it_dir, self.names = it_dir, (f"{samples}.jsonl", f"{verdicts}.jsonl")
        self.samples = it_dir / f"{samples}.partial.jsonl"
        self.verdicts = it_dir / f"{verdicts}.partial.jsonl"
        self.steps = it_dir / "rl-steps.partial.jsonl"
        # step -> the gold checker's pass rate on its rollouts, their count, and each request's own pass rate
        self.gold: dict[int, tuple[float, int, list[float]]] = {}

    @staticmethod
    def step_of_sample(sample_id: str) -> int:
        return int(sample_id.rsplit("/", 1)[1][1:].split("s")[0])

    def resume_at(self, step: int) -> None:
        """Keep what steps 1..`step` wrote (the checkpoint's); a fresh start (0) keeps nothing."""
        for path, step_of in ((self.samples, lambda r: self.step_of_sample(r["id"])),
                              (self.verdicts, lambda r: self.step_of_sample(r["sample_id"])),
                              (self.steps, lambda r: int(r["step"]))):
            rows, _ = recover_partial_jsonl(path)
            kept = [r for r in rows if step_of(r) <= step]
            atomic_write_jsonl(path, kept)
        if step:
            print(f"{self.it_dir.name}/rl: resuming from step {step}", flush=True)

    def write(self, samples: list[Sample], verdicts: list[Verdict]) -> None:
        with JsonlAppender(self.samples) as s:
            s.write_many(to_dict(x) for x in samples)
        with JsonlAppender(self.verdicts) as v:
            v.write_many(to_dict(x) for x in verdicts)

    def log_step(self, row: dict[str, Any]) -> None:
        gold = self.gold.get(int(row["step"]))
        with JsonlAppender(self.steps) as f:
            f.write_many([{**row, **({"gold": gold[0], "gold_n": gold[1], "gold_by_request": gold[2]}
                                     if gold is not None else {})}])

    def finish(self) -> None:
        for partial, name in ((self.samples, self.names[0]), (self.verdicts, self.names[1]), (self.steps, STEPS_FILE)):
            partial.touch()
            partial.replace(self.it_dir / name)


class Rewards:
    """The reward functions trl calls, one per `rl.rewards` entry, in trl's convention.

    trl calls them in order on the same batch; each scores the batch with its verifier, and the last writes the
    batch's samples and one verdict per sample (the weighted reward, each function's score in details).
    """

    def __init__(self, named: list[tuple[str, Verifier, float]], problems: dict[str, Problem], log: RolloutLog,
                 gold: Verifier | None, labelled: dict[str, Problem], model_name: str):
        self.named, self.problems, self.log = named, problems, log
        self.gold, self.labelled, self.model_name = gold, labelled, model_name
        self._batch: dict[str, Any] = {}

    def functions(self) -> list[Any]:
        return [self._function(k) for k in range(len(self.named))]

    def _samples(self, step: int, problem_id: Sequence[str], completions: Sequence[Any],
                 completion_ids: Sequence[Sequence[int]], stopped: Sequence[bool]) -> list[Sample]:
        seen: Counter[str] = Counter()
        out = []
        for pid, completion, ids, stop in zip(problem_id, completions, completion_ids, stopped, strict=True):
            text = completion if isinstance(completion, str) else str(completion[-1]["content"])
            out.append(Sample(f"{pid}/r{step}s{seen[pid]}", pid, text, len(ids) - int(stop),
                              "stop" if stop else "length", self.model_name))
            seen[pid] += 1
        return out

    def _function(self, k: int):
        name, verifier, _ = self.named[k]

        def reward(prompts, completions, completion_ids, problem_id, trainer_state, stopped, **_: Any):
            step = trainer_state.global_step + 1  # the update these rollouts feed
            if k == 0:
                samples = self._samples(step, problem_id, completions, completion_ids, stopped)
                self._batch = {"samples": samples, "verdicts": [], "scores": []}
            samples = self._batch["samples"]
            verdicts = verify_all(verifier, [(self.problems[s.problem_id], s) for s in samples])
            scores = [None if _unparsed(v) else float(v.score) for v in verdicts]
            self._batch["verdicts"].append(verdicts)
            self._batch["scores"].append(scores)
            if k == len(self.named) - 1:
                self._record(step, samples, self._batch["verdicts"], self._batch["scores"])
            return scores

        reward.__name__ = name  # trl logs rewards/NAME/mean and /std
        return reward

    def _record(self, step: int, samples: list[Sample], per_function: list[list[Verdict]],
                scored: list[list[float | None]]) -> None:
        gold = None
        if self.gold is not None:
            gold = verify_all(self.gold, [(self.labelled[s.problem_id], s) for s in samples])
            by_request: dict[str, list[bool]] = {}
            for s, v in zip(samples, gold, strict=True):
                by_request.setdefault(s.problem_id, []).append(v.passed)
            self.log.gold[step] = (sum(v.passed for v in gold) / max(1, len(gold)), len(gold),
                                   [sum(r) / len(r) for r in by_request.values()])
        verdicts = []
        for j, s in enumerate(samples):
            first = per_function[0][j]
            scores = {n: column[j] for (n, _, _), column in zip(self.named, scored, strict=True)}
            total = sum(w * scores[n] for n, _, w in self.named if scores[n] is not None)
            details = {**(first.details or {}), "step": step, "rewards": scores}
            if gold is not None:
                details["gold_passed"] = gold[j].passed
            verdicts.append(Verdict(s.id, s.problem_id, total, first.passed, first.answer,
                                    "+".join(n for n, _, _ in self.named), first.critique, details))
        self.log.write(samples, verdicts)


def _unparsed(v: Verdict) -> bool:
    from selfplay.verifiers.judge import is_unparsed

    return is_unparsed(v) or (isinstance(v.score, float) and math.isnan(v.score))


def build_rewards(ctx: RunContext) -> list[tuple[str, Verifier, float]]:
    """(name, verifier, weight) for each rl.rewards entry; 'verify' is the run's own verifier."""
    cfg, out, names = ctx.cfg, [], Counter()
    for n, spec in enumerate(cfg.rl.rewards):
        if spec.verifier == "verify":
            verifier = ctx.verifier
        else:
            verifier = build_verifier(spec.verifier, ctx.task.default_verifier, strict_format=cfg.verify.strict_format,
                                      options=spec.options, run=ctx.models, field=f"rl.rewards[{n}].verifier",
                                      judge=cfg.judge, seed=cfg.seed)
        name = verifier.name.replace("/", "_")
        names[name] += 1
        out.append((name if names[name] == 1 else f"{name}_{names[name]}", verifier, spec.weight))
    return out


def rl_stage(ctx: RunContext, i: int, source: Path, named: list[tuple[str, Verifier, float]] | None = None,
             samples: str = "samples", verdicts: str = "verdicts") -> dict[str, Any]:
    """`rl.steps` updates from `source` into iteration `i`'s model/; `named` replaces the rl.rewards entries.

    The rollouts go to `<samples>.jsonl` and their rewards to `<verdicts>.jsonl` (other names when an earlier stage of
    the iteration wrote samples.jsonl: rlaif's AI-preference answers)."""
    from selfplay.training.rl import train_rl

    cfg = ctx.cfg
    it_dir = ctx.rundir.iter_dir(i)
    out_dir, work_dir = it_dir / "model", it_dir / "trainer"
    log = RolloutLog(it_dir, samples, verdicts)
    files = {"samples_file": f"{samples}.jsonl", "verdicts_file": f"{verdicts}.jsonl", "steps_file": STEPS_FILE}
    if (out_dir / "config.json").is_file():  # killed after the merged model was in place, before the summary
        print(f"{it_dir.name}/rl: model/ is already complete; not training again", flush=True)
        shutil.rmtree(work_dir, ignore_errors=True)
        if log.samples.exists():
            log.finish()
        return {**files, "model": "model", "init_from": str(source), "recovered": True}
    name, rollout = _rollout(ctx)
    labelled = {p.id: p for p in ctx.labelled_train}
    gold = ctx.gold if ctx.gold is not None and not ctx.unlabelled else None
    rewards = Rewards(named or build_rewards(ctx), {p.id: p for p in ctx.train_problems}, log, gold, labelled,
                      str(source))
    prompts = [{"prompt": p.chat(), "problem_id": p.id} for p in ctx.train_problems]
    sampling = cfg.generate.params(cfg.rl.num_generations, cfg.seed + 1000 * i)
    ctx.pool.release()  # the trainer loads its own copy of the policy
    rl = cfg.rl.model_copy(update={"rollout": name})
    stats = train_rl(
        source, prompts, rewards.functions(), [w for _, _, w in rewards.named], out_dir, work_dir, rl, cfg.train,
        sampling, ctx.where, cfg.seed + i, rollout, cfg.generate.batch_size, log.log_step, log.resume_at,
        desc=f"{it_dir.name} rl")
    log.finish()
    return {**files, "model": "model", "init_from": str(source), **stats,
            "rewards": {n: {"verifier": v.name, "weight": w} for n, v, w in rewards.named}}


def run_iteration(ctx: RunContext, i: int, source: Path) -> Path:
    summary = ctx.stage(i, "rl", lambda: rl_stage(ctx, i, source))
    return ctx.rundir.iter_dir(i) / summary["model"]

