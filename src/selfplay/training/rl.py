"""Online RL: `rl.steps` policy updates with trl's GRPOTrainer or RLOOTrainer, then a merged checkpoint.

trl samples the rollouts, scores them with the reward functions, takes the group advantages and updates the
policy; this module sets trl up from the run config and adds what a run needs around it:

- **rollouts from our own sampler.** On the CPU trl's rollouts go through `generate`, about 3x slower than
  the `continuous` backend. A `rollout` function handed in by the caller (the grpo recipe hands in the
  continuous decoder) replaces trl's sampling step: it gets the live policy (LoRA adapters included) and the
  prompts trl tokenised, and returns the new tokens of each completion. On a GPU trl's vLLM modes stay trl's.
- **each step's figures** (trl's log: reward per function, zero-spread groups, lengths, truncation, entropy,
  KL, clip ratio) go to `on_log` with the step, and the progress bar shows the step and the mean reward;
- **resume**: a trainer checkpoint every `train.checkpoint_every` steps; a killed stage resumes from the last
  whole one with trl's data position and RNG, and `on_resume(step)` lets the caller drop what it logged after
  it, so nothing is counted twice. Rollouts are seeded by (seed, step), so the steps done again draw the same.

Parts import only the base: the rollout sampler and the reward functions come from the caller.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfplay import progress
from selfplay.config import RLConfig, TrainConfig
from selfplay.errors import UserError
from selfplay.interfaces import SamplingParams
from selfplay.models import Placement, load_model, load_tokenizer
from selfplay.training.common import latest_checkpoint, lora_config, quiet, train_and_save

# rollout(model, tokenizer, prompts, params, batch_size) -> params.n token lists per prompt, prompt by prompt:
# each list is the completion's new tokens up to and including its stop token.
Rollout = Callable[[Any, Any, list[list[int]], SamplingParams, int], list[list[list[int]]]]


def rollout_seed(seed: int, step: int, call: int) -> int:
    """The sampling seed of one rollout call: fixed by the run seed and the step, so a resumed step draws the same."""
    digest = hashlib.blake2b(f"{seed}:{step}:{call}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def _runs(prompt_ids: Sequence[Sequence[int]], size: int) -> list[tuple[int, int]]:
    """(start, length) of each group: consecutive identical prompts, cut into pieces of at most `size`."""
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(prompt_ids) + 1):
        if i == len(prompt_ids) or list(prompt_ids[i]) != list(prompt_ids[start]) or i - start == size:
            out.append((start, i - start))
            start = i
    return out


class _OwnRollouts:
    """Mixed into trl's trainer: rollouts come from `self._sp_rollout` instead of trl's `generate` path.

    trl's sampler repeats each prompt `num_generations` times in a row; each run of identical prompts is one
    prompt with n samples here, so its prompt is prefilled once.
    """

    _sp_rollout: Rollout | None = None
    _sp_seed: int = 0
    _sp_batch_size: int = 64
    _sp_calls: dict[int, int]
    _sp_timing: dict[str, float]

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
        start = time.perf_counter()
        completions = None if self._sp_rollout is None or self.use_vllm else self._own_rollouts(prompt_ids)
        if completions is None:  # trl's own sampling: generate, or its vLLM modes
            self._sp_rollout = None
            out = super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
            completions = out[0] if isinstance(out, tuple) else out
        else:
            out = (completions, None) if _returns_logprobs(self) else completions
        self._sp_timing["seconds"] += time.perf_counter() - start
        self._sp_timing["tokens"] += sum(len(c) for c in completions)
        return out

    def _own_rollouts(self, prompt_ids: list[list[int]]) -> list[list[int]] | None:
        step = self.state.global_step
        call = self._sp_calls.get(step, 0)
        self._sp_calls = {step: call + 1}
        model = self.accelerator.unwrap_model(self.model)
        policy = model.get_base_model() if hasattr(model, "get_base_model") else model
        was_training = model.training
        completions: list[list[int] | None] = [None] * len(prompt_ids)
        by_size: dict[int, list[tuple[int, int]]] = {}
        for start, n in _runs(prompt_ids, self.num_generations):
            by_size.setdefault(n, []).append((start, n))
        try:
            for n, runs in sorted(by_size.items()):
                params = SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p,
                                        max_new_tokens=self.max_completion_length,
                                        seed=rollout_seed(self._sp_seed, step, call * 1000 + n))
                drawn = self._sp_rollout(policy, self.processing_class, [list(prompt_ids[s]) for s, _ in runs], params,
                                         self._sp_batch_size)
                if drawn is None:  # the sampler cannot run this model
                    return None
                for (start, _), seqs in zip(runs, drawn, strict=True):
                    completions[start : start + n] = [list(x) for x in seqs]
        finally:
            model.train(was_training)
        return completions  # type: ignore[return-value]


def _returns_logprobs(trainer) -> bool:
    from trl import GRPOTrainer

    return isinstance(trainer, GRPOTrainer)  # GRPO's sampling step returns (ids, logprobs); RLOO's the ids alone


def _trainer_class(algorithm: str):
    from trl import GRPOTrainer, RLOOTrainer

    base = {"grpo": GRPOTrainer, "rloo": RLOOTrainer}[algorithm]
    return type(f"SelfPlay{base.__name__}", (_OwnRollouts, base), {})


def _config(rl: RLConfig, train: TrainConfig, sampling: SamplingParams, work_dir: Path, where: Placement,
            seed: int, use_vllm: bool, weights: Sequence[float]):
    import torch
    from trl import GRPOConfig, RLOOConfig

    total = rl.prompts_per_step * rl.num_generations
    micro = min(rl.micro_batch, total)
    settings: dict[str, Any] = dict(
        output_dir=str(work_dir), max_steps=rl.steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=total // micro,  # trl samples all of an update's rollouts at once
        learning_rate=rl.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, logging_steps=1, save_strategy="steps", save_steps=train.checkpoint_every,
        save_total_limit=1, report_to=[], seed=seed, data_seed=seed, use_cpu=where.device == "cpu",
        bf16=where.dtype == torch.bfloat16, fp16=where.dtype == torch.float16, dataloader_num_workers=0,
        disable_tqdm=True, num_generations=rl.num_generations, max_completion_length=sampling.max_new_tokens,
        temperature=sampling.temperature, top_p=sampling.top_p, beta=rl.beta, epsilon=rl.epsilon,
        epsilon_high=rl.epsilon_high, mask_truncated_completions=rl.mask_truncated_completions,
        use_vllm=use_vllm, log_completions=False, reward_weights=[float(w) for w in weights],
        # trl turns it on for memory; on the CPU it only costs time (about 11% of an update, measured)
        gradient_checkpointing=where.device != "cpu",
    )
    if rl.algorithm == "grpo":
        settings.update(loss_type=rl.loss_type, scale_rewards=rl.scale_rewards)
    check_options(rl)
    settings.update(rl.options)
    return {"grpo": GRPOConfig, "rloo": RLOOConfig}[rl.algorithm](**settings)


def check_options(rl: RLConfig) -> None:
    """Refuse an rl.options key that trl's config for rl.algorithm does not have, in one line."""
    from trl import GRPOConfig, RLOOConfig

    cls = {"grpo": GRPOConfig, "rloo": RLOOConfig}[rl.algorithm]
    unknown = sorted(k for k in rl.options if k not in cls.__dataclass_fields__)
    if unknown:
        raise UserError(f"rl.options: {', '.join(unknown)} is not a setting of trl's {cls.__name__}")


class _Progress:
    """A TrainerCallback: the step and the mean reward on a progress bar, and each step's log to `on_log`."""

    def __init__(self, total: int, desc: str, on_log: Callable[[dict[str, Any]], None]):
        self.total, self.desc, self.on_log = total, desc, on_log
        self.bar = None

    def _callback(self):
        from tqdm.auto import tqdm
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                outer.bar = tqdm(total=outer.total, initial=state.global_step, desc=outer.desc, unit="step")

            def on_step_end(self, args, state, control, **kwargs):
                progress.report(state.global_step, outer.total, "step")
                if outer.bar is not None:
                    outer.bar.update(state.global_step - outer.bar.n)

            def on_log(self, args, state, control, logs=None, **kwargs):
                logs = dict(logs or {})
                if "reward" in logs:  # a step's figures (the end-of-training summary has no reward)
                    outer.on_log({"step": state.global_step, **logs})
                    if outer.bar is not None:
                        figures = {"reward": f"{logs['reward']:.3f}"}
                        if "kl" in logs:
                            figures["kl"] = f"{logs['kl']:.4f}"
                        outer.bar.set_postfix(figures, refresh=False)

            def on_train_end(self, args, state, control, **kwargs):
                if outer.bar is not None:
                    outer.bar.close()

        return Callback()


def train_rl(
    init_path: Path, prompts: Sequence[dict[str, Any]], reward_functions: Sequence[Callable[..., Any]],
    weights: Sequence[float], out_dir: Path, work_dir: Path, rl: RLConfig, train: TrainConfig,
    sampling: SamplingParams, where: Placement, seed: int, rollout: Rollout | None, rollout_batch_size: int,
    on_log: Callable[[dict[str, Any]], None], on_resume: Callable[[int], None], desc: str = "rl",
) -> dict[str, Any]:
    """Run `rl.steps` updates of the model at `init_path` on `prompts` ({"prompt": chat turns, ...columns the
    reward functions read}); write the merged policy to `out_dir` atomically and return the stage's figures.

    `rollout` None (or rl.rollout vllm) leaves the sampling to trl. Every step's log goes to `on_log`; before
    training, `on_resume(step)` gets the step of the checkpoint it resumes from (0 for a fresh start).
    """
    from datasets import Dataset

    quiet()
    if len(prompts) < 1:
        raise UserError("rl: no training prompts")
    if len(weights) != len(reward_functions):
        raise ValueError("one weight per reward function")
    use_vllm = rl.rollout == "vllm"
    args = _config(rl, train, sampling, work_dir, where, seed, use_vllm, weights)
    resume_from = latest_checkpoint(work_dir)
    on_resume(int(Path(resume_from).name.split("-")[1]) if resume_from else 0)
    tokenizer = load_tokenizer(init_path)
    model = load_model(init_path, where)
    progress = _Progress(rl.steps, desc, on_log)
    stops: set[int] = set()
    trainer = _trainer_class(rl.algorithm)(
        model=model, reward_funcs=[_with_stops(f, stops) for f in reward_functions], args=args,
        train_dataset=Dataset.from_list(list(prompts)),
        processing_class=tokenizer, peft_config=lora_config(train), callbacks=[progress._callback()],
    )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our bar shows the step and the reward; rl-steps.jsonl has the rest
    stops.update(i for i in [*trainer.eos_token_ids, tokenizer.eos_token_id] if i is not None)
    trainer._sp_rollout = None if use_vllm else rollout
    trainer._sp_seed, trainer._sp_batch_size = seed, rollout_batch_size
    trainer._sp_calls, trainer._sp_timing = {}, {"seconds": 0.0, "tokens": 0}
    start = time.perf_counter()
    with _score_completions_only(where):
        stats = train_and_save(trainer, train, out_dir, work_dir, tokens_per_epoch=0)
    seconds = time.perf_counter() - start
    timing = trainer._sp_timing
    stats.pop("epochs", None)
    stats.pop("tokens_per_epoch", None)
    stats.pop("tokens_per_second", None)
    return {
        **stats, "algorithm": rl.algorithm, "rollout": "trl" if trainer._sp_rollout is None else "continuous",
        "rollout_seconds": timing["seconds"], "rollout_tokens": timing["tokens"],
        "rollout_tokens_per_second": timing["tokens"] / timing["seconds"] if timing["seconds"] else None,
        "update_seconds": max(0.0, seconds - timing["seconds"]),
    }



@contextmanager
def _score_completions_only(where: Placement):
    """On the CPU, let trl's fused LM head score only the completion tokens, as it does on a GPU.

    trl 1.x computes the per-token log-probabilities in vocabulary chunks. With Triton (CUDA, XPU) it projects only
    the positions it scores, the completion's; elsewhere it projects every position, prompt included, to keep tile
    shapes fixed for compilers such as Neuron's. The CPU compiles nothing there, so that is pure waste: with a
    one-shot arithmetic prompt about 3 positions in 4 are prompt, and an update takes 36% less time without them
    (measured on the embedded model, docs/BENCHMARKS.md). The choice is one private trl function, patched only while
    training on the CPU and put back after; the kernel and its results are unchanged (tests/test_grpo.py compares
    both ways). If trl renames it, training runs the slow way and says so once.
    """
    if where.device != "cpu":
        yield
        return
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        print("rl: trl's fused LM head has changed; every position is scored (slower on the CPU)", flush=True)
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def _with_stops(fn: Callable[..., Any], stops: set[int]) -> Callable[..., Any]:
    """`fn` called with `stopped`: whether each completion ended on a stop token (else it was cut at the cap)."""

    def reward(*, completion_ids, **kwargs):
        return fn(completion_ids=completion_ids, stopped=[bool(ids) and ids[-1] in stops for ids in completion_ids],
                  **kwargs)

    reward.__name__ = fn.__name__
    return reward
