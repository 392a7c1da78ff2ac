"""The settings of one recipe each: the judge, STaR, SPIN, the teacher, Constitutional AI and online RL.

Each is a section of the run config (`selfplay.config.RunConfig`); a recipe reads its own and ignores the others.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from selfplay.config.base import Section as _Section


class JudgeConfig(_Section):
    """The LLM judge that scores candidates when the recipe has no checker (Self-Rewarding)."""

    model: str = Field(
        "current", description="Who judges: 'current' (the model being trained, as in the paper), 'base' (the "
        "frozen starting model) or a model folder.",
    )
    mode: Literal["constrained", "generate"] = Field(
        "constrained", description="'constrained': force 'Score: ' and take the expected digit from the model's "
        "probabilities of 1-5; 'generate': let the judge write and parse its last 'Score: N' line.",
    )
    samples: int = Field(3, ge=1, description="Judgements averaged per response ('generate' mode).")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature of the judge ('generate' mode).")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus threshold of the judge ('generate' mode).")
    max_new_tokens: int = Field(160, ge=1, description="Tokens a judgement may use ('generate' mode).")
    retries: int = Field(1, ge=0, description="Extra tries for a judgement with no valid score ('generate' mode).")
    template: str | None = Field(
        None, description="A rubric template file with {prompt}, {response}, {fence_open}, {fence_close} slots "
        "(null: the Self-Rewarding paper's additive 5-point rubric).",
    )
    neutralize: bool = Field(
        True, description="Blank score-like text ('Score: 5', '5/5', 'award 5 points') in the judged response "
        "before the judge reads it.",
    )
    pass_score: float = Field(4.0, ge=0.0, le=5.0, description="A response scored at least this counts as passed.")
    batch_size: int = Field(32, ge=1, description="Judge prompts decoded or scored at once.")


class StarConfig(_Section):
    """STaR rationalization: a second try, with the answer as a hint, for training problems no sample solved."""

    rationalize: bool = Field(True, description="Retry unsolved training problems with the reference answer as a "
                              "hint (off: plain RFT).")
    hint: str = Field(
        "Hint: the correct answer is {answer}. Show how to reach it.",
        description="The hint added to the prompt of an unsolved problem; {answer} is its reference. Training "
        "examples never contain it.",
    )
    samples: int = Field(4, ge=1, description="Hinted samples per unsolved problem.")
    drop_mentions: list[str] = Field(
        default_factory=lambda: ["hint", "given answer", "answer is given", "we are told", "as stated"],
        description="A rationalization that mentions any of these (case-insensitive), or repeats three words in a "
        "row of star.hint, leans on the hint and is dropped: without the hint in its prompt it would teach the "
        "model to answer a hint it never saw.",
    )


class SpinConfig(_Section):
    """SPIN: the demonstration is chosen, the model's own answer to the same prompt is rejected."""

    drop_identical: bool = Field(True, description="Make no pair when the model's answer already equals the "
                                 "demonstration (after whitespace).")


class TeacherConfig(_Section):
    """Distillation: who answers the prompts the student is trained on."""

    model: str = Field(
        "", description="A local model folder, 'embedded:NAME', or an OpenAI-compatible endpoint URL "
        "(http://HOST:PORT/v1) whose chat completions answer the prompts.",
    )
    served_model: str | None = Field(None, description="The endpoint's model name (null: the first it lists).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the endpoint's API key.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once (endpoint).")
    timeout: float = Field(120.0, gt=0, description="Seconds per request (endpoint).")
    retries: int = Field(3, ge=0, description="Retries with backoff for a failed request (endpoint).")
    samples: int = Field(1, ge=1, description="Teacher answers per prompt.")
    temperature: float = Field(0.0, ge=0.0, description="Teacher sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Teacher nucleus threshold.")
    max_new_tokens: int | None = Field(None, ge=1, description="Cap on teacher tokens (null: generate.max_new_tokens).")
    verify: bool = Field(True, description="Keep only teacher answers the run's verifier passes (off: keep all).")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Fields added to every request to the endpoint (a server's own knobs, "
        "e.g. transformers serve's generation_config: '{\"do_sample\": true}' to sample at all).",
    )

    @property
    def is_endpoint(self) -> bool:
        return self.model.startswith(("http://", "https://"))


class ConstitutionConfig(_Section):
    """Constitutional AI: the model critiques and revises its own answers by written principles."""

    path: str = Field(
        "builtin:constitution", description="The principles: a JSONL file of {name, critique, revision, compare?} "
        "objects, or 'builtin:constitution' (helpful and harmless) or 'builtin:follow-instructions' (the "
        "instruction task's constraints).",
    )
    rounds: int = Field(1, ge=1, le=8, description="Critique-and-revise rounds per response, each by a principle "
                        "drawn at random (seeded by run seed, iteration, response and round).")
    phase: Literal["supervised", "preference"] = Field(
        "supervised", description="'supervised': SFT on the final revisions; 'preference' (RLAIF): DPO on pairs.",
    )
    pairs: Literal["revision", "judged"] = Field(
        "revision", description="Preference pairs: 'revision' (the final revision chosen, the first response "
        "rejected) or 'judged' (the judge.model compares two responses by a principle in both orders; only "
        "agreeing judgements make a pair).",
    )
    responses: int | None = Field(
        None, ge=1, description="Responses sampled per training prompt, each critiqued and revised (null: 1; "
        "pairs: judged always samples 2). generate.samples_per_problem is not used by this recipe.",
    )
    critique_max_new_tokens: int = Field(96, ge=1, description="Cap on tokens per critique.")
    revision_max_new_tokens: int | None = Field(
        None, ge=1, description="Cap on tokens per revision (null: generate.max_new_tokens)."
    )
    keep_truncated: bool = Field(
        False, description="Keep a revision that hit its token cap (off: it falls back to the previous text, as an "
        "empty one does; both are counted).",
    )
    drop_unchanged: bool = Field(
        False, description="Train only on responses the revisions changed (off: an unchanged response is kept).",
    )
    verify: bool = Field(False, description="Keep only final revisions that the run's verifier passes.")

    @model_validator(mode="after")
    def _check(self) -> ConstitutionConfig:
        if self.phase == "preference" and self.pairs == "judged" and self.responses not in (None, 2):
            raise ValueError(f"responses: pairs: judged compares two responses per prompt; leave it unset (got "
                             f"{self.responses})")
        return self

    @property
    def responses_per_prompt(self) -> int:
        return 2 if self.phase == "preference" and self.pairs == "judged" else self.responses or 1


class RewardSpec(_Section):
    """One reward of online RL: a verifier's score, weighted."""

    verifier: str = Field(
        "verify", description="'verify' (the run's verify.verifier, with verify.options) or any name verify.verifier "
        "takes: 'reasoning_gym', 'math', 'ifeval', 'code', 'majority' (TTRL), 'judge', 'reward_model', 'module:attr'.",
    )
    weight: float = Field(1.0, description="Its weight in the summed reward (trl's reward_weights).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Settings for its factory (ignored for 'verify': verify.options holds them)."
    )


class RLConfig(_Section):
    """Online RL (recipe: grpo): each iteration is `steps` policy updates on rollouts scored by the rewards."""

    algorithm: Literal["grpo", "rloo"] = Field(
        "grpo", description="trl's trainer: 'grpo' (GRPOTrainer, group-normalised advantages and its loss_type "
        "family) or 'rloo' (RLOOTrainer, leave-one-out baseline, KL in the reward).",
    )
    steps: int = Field(40, ge=1, description="Policy updates per iteration.")
    prompts_per_step: int = Field(
        8, ge=1, description="Training prompts per update; each gets num_generations completions (trl's batch is "
        "prompts_per_step * num_generations completions).",
    )
    num_generations: int = Field(8, ge=2, description="Completions per prompt: the group an advantage is taken in.")
    micro_batch: int = Field(
        16, ge=1, description="Completions per forward and backward pass (trl's per_device_train_batch_size); an "
        "update still covers all prompts_per_step * num_generations of them, by gradient accumulation. Measured on a "
        "2-core CPU: 16 at a time is about twice as fast as 64 at once (docs/BENCHMARKS.md).",
    )
    learning_rate: float = Field(2e-5, gt=0.0, description="Peak learning rate of the policy (constant).")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        "dapo", description="trl's GRPO loss normalisation (grpo only): 'dapo' (per token over the batch, trl's "
        "default), 'grpo' (per sequence), 'dr_grpo' (a constant, no length bias), 'bnpo'.",
    )
    beta: float = Field(
        0.01, ge=0.0, description="KL coefficient to the iteration's start model (grpo: in the loss; rloo: in the "
        "reward). 0 loads no reference model, so KL is not measured and the report has no KL figures.",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="trl's advantage scaling (grpo only): by the group's std, the batch's, or none "
        "(Dr. GRPO).",
    )
    epsilon: float = Field(0.2, gt=0.0, description="Lower clip range of the probability ratio.")
    epsilon_high: float | None = Field(
        None, gt=0.0, description="Upper clip range (null: epsilon; DAPO's clip-higher uses 0.28).",
    )
    mask_truncated_completions: bool = Field(
        False, description="Leave completions cut at generate.max_new_tokens out of the loss (DAPO).",
    )
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec()], description="The rewards, summed with their weights; trl logs each.",
    )
    rollout: Literal["auto", "continuous", "transformers", "vllm"] = Field(
        "auto", description="Who samples the rollouts: 'continuous' (our CPU decoder on the live policy, several "
        "times faster than generate), 'transformers' (trl's generate), 'vllm' (trl's vLLM modes, on a GPU; set "
        "options.vllm_mode), or 'auto' (continuous on the CPU, transformers on a GPU without vllm, else vllm).",
    )
    min_signal: float = Field(
        0.5, ge=0.0, le=1.0, description="Alarm when less than this share of groups carry a gradient (reward spread "
        "above zero), averaged over an iteration's steps.",
    )
    min_entropy_ratio: float = Field(
        0.2, ge=0.0, le=1.0, description="Alarm when the policy's entropy at an iteration's end falls below this "
        "share of its first step's (entropy collapse).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="More of trl's GRPOConfig/RLOOConfig settings, by trl's names "
        "(vllm_mode, vllm_gpu_memory_utilization, top_entropy_quantile, ...); they override the ones above.",
    )

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if not self.rewards:
            raise ValueError("rewards: at least one reward is needed")
        total = self.prompts_per_step * self.num_generations
        if self.micro_batch < total and total % self.micro_batch:
            raise ValueError(f"micro_batch: {self.micro_batch} does not divide the {total} completions of an update "
                             f"(prompts_per_step {self.prompts_per_step} x num_generations {self.num_generations})")
        if self.algorithm == "rloo" and (self.loss_type != "dapo" or self.scale_rewards != "group"):
            raise ValueError("loss_type and scale_rewards are GRPO's; RLOOTrainer has neither (algorithm: rloo)")
        return self
