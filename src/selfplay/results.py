"""What an evaluation found, typed: the one home of eval.json's decision and guard results.

The driver, the run folder's metrics, the report and the evaluation stage all read eval.json through
`Evaluation`, so a field is named in one place. The file format is unchanged: `to_dict` writes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfplay.files import read_json

GUARDS = ("degradation", "forgetting", "reward_hacking", "pseudo_labels", "mode_collapse", "contamination",
          "persistent_failures", "win_rate", "human_eval")
# The held-out figure the self-consistency stop rule reads (stop.self_consistency_rise).
CONFIDENTLY_WRONG = "heldout_confidently_wrong"
# The blind human evaluation's win rate (review.human_eval), read by stop.min_human_win_rate.
HUMAN_WIN_RATE = "human_win_rate"


@dataclass(frozen=True)
class Decision:
    """The stop rules' verdict after one evaluation."""

    action: str  # continue | rollback | stop | finish
    iteration: int
    best_iteration: int
    metric: str
    best_value: float
    degraded: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def goes_on(self) -> bool:
        return self.action in ("continue", "rollback")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(**data)


@dataclass
class GuardResult:
    """One guard's finding: a status (ok, alarm, note, caught, n/a), its messages, and its own figures."""

    status: str
    alarms: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.figures.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {**self.figures, "status": self.status, "alarms": self.alarms, "notes": self.notes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardResult:
        figures = {k: v for k, v in data.items() if k not in ("status", "alarms", "notes")}
        return cls(data["status"], list(data.get("alarms", [])), list(data.get("notes", [])), figures)


@dataclass
class Evaluation:
    """One iteration's eval.json."""

    iteration: int
    model: str
    metrics: dict[str, Any]
    model_dir: str | None = None  # the evaluated model, relative to the run folder when inside it
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    categories: dict[str, Any] = field(default_factory=dict)
    guards: dict[str, GuardResult] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)
    decision: Decision | None = None
    seconds: float | None = None
    guard_seconds: float | None = None

    @classmethod
    def load(cls, path: Path, iteration: int) -> Evaluation:
        """Read eval.json; runs started before the guards existed have only model and metrics."""
        data = read_json(path)
        decision = data.get("decision")
        return cls(
            iteration=iteration, model=data["model"], metrics=data["metrics"], model_dir=data.get("model_dir"),
            sets=data.get("sets", {}),
            categories=data.get("categories", {}),
            guards={k: GuardResult.from_dict(v) for k, v in data.get("guards", {}).items()},
            alarms=data.get("alarms", []), decision=Decision.from_dict(decision) if decision else None,
            seconds=data.get("seconds"), guard_seconds=data.get("guard_seconds"),
        )

    def to_dict(self) -> dict[str, Any]:
        guards = {k: g.to_dict() for k, g in self.guards.items()}
        out: dict[str, Any] = {"model": self.model, "model_dir": self.model_dir, "metrics": self.metrics,
                               "sets": self.sets,
                               "categories": self.categories, "guards": guards, "alarms": self.alarms}
        if self.decision is not None:
            out["decision"] = self.decision.to_dict()
        out.update(seconds=self.seconds, guard_seconds=self.guard_seconds, iteration=self.iteration)
        return out

    def guard(self, name: str) -> GuardResult | None:
        return self.guards.get(name)

    @property
    def control_accuracy(self) -> dict[str, float]:
        """Greedy accuracy of each control task, by control name."""
        return {name.removeprefix("control/"): m["greedy_accuracy"] for name, m in self.sets.items()
                if name.startswith("control/") and "greedy_accuracy" in m}

    def decision_row(self) -> dict[str, Any]:
        """The figures the stop rules read."""
        row = {**self.metrics, "iteration": self.iteration, "control": self.control_accuracy}
        pl = self.guards.get("pseudo_labels")
        share = ((pl.get("heldout") or {}).get("confidently_wrong_share") if pl else None)
        if share is not None:
            row[CONFIDENTLY_WRONG] = share
        human = self.guards.get("human_eval")
        if human is not None and human.get("win_rate") is not None:
            row[HUMAN_WIN_RATE] = human.get("win_rate")
            row[f"{HUMAN_WIN_RATE}_ci95"] = human.get("ci95")
        return row

    def figures(self) -> dict[str, Any]:
        """The headline number of every guard, flat, for metrics.jsonl and plots."""
        out: dict[str, Any] = {}
        for name, m in self.sets.items():
            if "greedy_accuracy" in m:
                out[f"{name}/accuracy"] = m["greedy_accuracy"]
                out[f"{name}/ci95"] = m["greedy_ci95"]
                if name.startswith("control/") and m.get("answer_rate") is not None:
                    out[f"{name}/answer_rate"] = m["answer_rate"]
        mc = self.guards.get("mode_collapse")
        if mc is not None:
            for key in ("distinct_1", "distinct_2", "self_bleu", "near_duplicate_share", "embedding_spread",
                        "length_mean", "length_std"):
                if key in mc.figures:
                    out[f"diversity/{key}"] = mc.figures[key]
        rh = self.guards.get("reward_hacking")
        heldout = (rh.get("heldout") if rh else None) or {}
        for key in ("proxy_pass_rate", "gold_pass_rate", "correlation"):
            if key in heldout:
                out[f"reward/{key}"] = heldout[key]
        pl = self.guards.get("pseudo_labels")
        if pl is not None:
            out.update(pseudo_label_figures(pl))
        wr = self.guards.get("win_rate")
        if wr is not None:
            for key in ("win_rate", "lc_win_rate"):
                if wr.figures.get(key) is not None:
                    out[f"judge/{key}"] = wr.figures[key]
        human = self.guards.get("human_eval")
        if human is not None and human.get("win_rate") is not None:
            out["human/win_rate"] = human.get("win_rate")
            out["human/ci95"] = human.get("ci95")
            out["human/compared"] = human.get("compared")
        rl = self.guards.get("rl")
        if rl is not None:  # online RL: the iteration's last reward, gold, KL and entropy, and its signal
            for key in ("reward_last", "gold_last", "kl_last", "entropy_last", "zero_spread_share", "truncated_share"):
                if rl.figures.get(key) is not None:
                    out[f"rl/{key}"] = rl.figures[key]
        pf = self.guards.get("persistent_failures")
        if pf is not None and "never_solved" in pf.figures:
            out["never_solved"] = pf.figures["never_solved"]
        if self.guards or self.alarms:
            out["alarms"] = self.alarms
        if self.decision is not None:
            out["decision"] = self.decision.action
            out["best_iteration"] = self.decision.best_iteration
        return out


def pseudo_label_figures(guard: GuardResult) -> dict[str, Any]:
    """The pseudo-label audit's headline numbers, flat (pseudo/KEY), for metrics.jsonl and the report."""
    out: dict[str, Any] = {}
    for section, keys in (("train", ("accuracy", "confident_accuracy", "trained_accuracy", "mean_share", "ties",
                                     "unreadable")),
                          ("heldout", ("confidently_wrong_share", "majority_accuracy")),
                          ("entrenchment", ("wrong_trained", "fixed", "stayed", "spread", "other"))):
        found = guard.get(section) or {}
        for key in keys:
            if found.get(key) is not None:
                out[f"pseudo/{key}" if section != "entrenchment" else f"pseudo/entrenched_{key}"] = found[key]
    return out
