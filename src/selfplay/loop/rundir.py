"""The run folder: its layout, the single-writer lock, the frozen config, and the state and metrics files.

    runs/NAME/
      config.yaml        resolved config, frozen at start
      state.json         progress, rewritten atomically after every stage
      metrics.jsonl      one line per evaluated iteration, rebuilt from the eval.json files
      problems/          the train and held-out splits, the exemplar and the control tasks, frozen at start
      iter-000/          evaluation of the starting model (with the guards' baseline)
      iter-001/ ...      samples, verdicts, train data, review, model, eval (metrics, guards, decision)
      report.html        the report, rewritten after every evaluation
      tensorboard/       the same figures as TensorBoard scalars, when tensorboard is installed
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

from selfplay import config as configlib
from selfplay.errors import UserError
from selfplay.files import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json, read_jsonl


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_file = None

    # -- layout -------------------------------------------------------------------------------
    def iter_dir(self, i: int) -> Path:
        return self.path / f"iter-{i:03d}"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def problems_dir(self) -> Path:
        return self.path / "problems"

    # -- creation and locking -----------------------------------------------------------------
    def create(self) -> bool:
        """Make the folder if needed and check it is writable; True if this call made it."""
        existed = self.path.is_dir()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"{self.path}: cannot write the run folder ({e.strerror})") from None
        return not existed

    def lock(self) -> None:
        """Hold an exclusive lock for this process's lifetime; the OS drops it even on SIGKILL."""
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise UserError(f"{self.path}: the run is in use by another selfplay process (pid {holder})") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- config -------------------------------------------------------------------------------
    def frozen_config(self) -> configlib.RunConfig | None:
        if not self.config_path.is_file():
            return None
        return configlib.validate(configlib.load_yaml(self.config_path), str(self.config_path))

    def check_config(self, cfg: configlib.RunConfig, allow_change: bool) -> list[str]:
        """Keys changed against the frozen config; a change is refused unless the user allows it."""
        old = self.frozen_config()
        if old is None:
            return []
        changed = configlib.diff(old, cfg)
        if changed and not allow_change:
            raise UserError(
                f"{self.config_path}: the run was started with a different config (changed: "
                f"{', '.join(changed)}); pass --allow-config-change to continue with the new one"
            )
        return changed

    def freeze_config(self, cfg: configlib.RunConfig) -> None:
        """Write the config; a config it replaces is kept in config-history/."""
        if self.config_path.is_file():
            if self.frozen_config() == cfg:
                return
            history = self.path / "config-history"
            history.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            atomic_write_text(history / f"config-{stamp}.yaml", self.config_path.read_text())
        atomic_write_text(self.config_path, configlib.dump(cfg))

    # -- state and metrics --------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        return read_json(self.state_path) if self.state_path.is_file() else {}

    def write_state(self, **updates: Any) -> None:
        state = self.read_state()
        state.update(updates, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        atomic_write_json(self.state_path, state)

    def rebuild_metrics(self) -> list[dict[str, Any]]:
        """Rewrite metrics.jsonl from the stage files, so it can never hold a line twice."""
        rows = self.collect_metrics()
        atomic_write_jsonl(self.metrics_path, rows)
        return rows

    def collect_metrics(self) -> list[dict[str, Any]]:
        """One row per evaluated iteration, read from its eval.json and stage summaries."""
        rows = []
        for it_dir in sorted(self.path.glob("iter-[0-9][0-9][0-9]")):
            eval_path = it_dir / "eval.json"
            if not eval_path.is_file():
                continue
            evaluation = read_json(eval_path)
            row: dict[str, Any] = {"iteration": int(it_dir.name.split("-")[1])}
            row.update(evaluation["metrics"])
            row.update(guard_figures(evaluation))
            seconds = {}
            for stage in ("generate", "verify", "filter", "review", "train", "eval"):
                summary = it_dir / f"{stage}.json"
                if summary.is_file():
                    data = read_json(summary)
                    seconds[stage] = data.get("seconds")
                    if stage == "filter":
                        row["kept"] = data["kept"]
                        row["problems_solved"] = data["problems_solved"]
                        row["train_pass_rate"] = data["passed"] / max(1, data["samples"])
                        row["contaminated"] = data.get("contaminated", 0)
            row["seconds"] = seconds
            rows.append(row)
        return rows

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path) if self.metrics_path.is_file() else []


def guard_figures(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The headline number of every guard in one eval.json, flat, for metrics.jsonl and plots."""
    out: dict[str, Any] = {}
    for name, m in evaluation.get("sets", {}).items():
        if "greedy_accuracy" in m:
            out[f"{name}/accuracy"] = m["greedy_accuracy"]
            out[f"{name}/ci95"] = m["greedy_ci95"]
    guards = evaluation.get("guards", {})
    mc = guards.get("mode_collapse", {})
    for key in ("distinct_1", "distinct_2", "self_bleu", "near_duplicate_share", "embedding_spread", "length_mean",
                "length_std"):
        if key in mc:
            out[f"diversity/{key}"] = mc[key]
    heldout = guards.get("reward_hacking", {}).get("heldout") or {}
    for key in ("proxy_pass_rate", "gold_pass_rate", "correlation"):
        if key in heldout:
            out[f"reward/{key}"] = heldout[key]
    pf = guards.get("persistent_failures", {})
    if "never_solved" in pf:
        out["never_solved"] = pf["never_solved"]
    if "alarms" in evaluation:
        out["alarms"] = evaluation["alarms"]
    if "decision" in evaluation:
        out["decision"] = evaluation["decision"]["action"]
        out["best_iteration"] = evaluation["decision"]["best_iteration"]
    return out
