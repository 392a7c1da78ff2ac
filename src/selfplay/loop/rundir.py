"""The run folder: its layout, the single-writer lock, the frozen config, and the state and metrics files.

    runs/NAME/
      config.yaml        resolved config, frozen at start
      state.json         status and the running stage, rewritten atomically when a stage starts and at the end
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
from selfplay.records import TRAIN_FILES, Example, Pair, from_dict
from selfplay.results import Evaluation

STAGES = ("generate", "verify", "filter", "review", "train", "eval")  # the stage summaries an iteration may hold


def load_records(path: Path, cls: type) -> list:
    """Records of type `cls` from a JSONL file; a line that is not one is an error naming its number."""
    records = []
    for i, row in enumerate(read_jsonl(path), start=1):
        try:
            records.append(from_dict(cls, row))
        except TypeError as e:
            raise UserError(f"{path}: record {i}: not a {cls.__name__} ({e})") from None
    return records


# What a judged recipe's filter stage reports about its judge, carried into metrics.jsonl as judge/KEY.
JUDGE_FIGURES = ("judge_mean_score", "pair_accuracy_gold", "judge_gold_correlation", "unparsed", "chosen_longer")


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_file = None

    # -- layout -------------------------------------------------------------------------------
    def iter_dir(self, i: int) -> Path:
        return self.path / f"iter-{i:03d}"

    @staticmethod
    def iteration_of(it_dir: Path) -> int:
        """The iteration number of an `iter-NNN` folder."""
        return int(Path(it_dir).name.removeprefix("iter-"))

    def iter_dirs(self) -> list[Path]:
        return sorted(self.path.glob("iter-[0-9][0-9][0-9]"))

    def require(self) -> RunDir:
        """Refuse a folder that is not a run (every command that reads a run starts here)."""
        if not self.config_path.is_file():
            raise UserError(f"{self.path}: not a run folder (no config.yaml)")
        return self

    def evaluations(self) -> dict[int, Evaluation]:
        """Every eval.json in the run, by iteration."""
        return {self.iteration_of(d): Evaluation.load(d / "eval.json", self.iteration_of(d))
                for d in self.iter_dirs() if (d / "eval.json").is_file()}

    def relative(self, path: Path) -> str:
        """`path` relative to the run folder when it lies inside it (so the run can be moved), else absolute."""
        try:
            return str(Path(path).resolve().relative_to(self.path.resolve()))
        except ValueError:
            return str(Path(path).resolve())

    def model_of(self, i: int, base: Path | None = None) -> Path:
        """The model iteration `i` produced: the one the driver evaluated; iteration 0's is the starting model."""
        if i == 0 and base is not None:
            return base
        it_dir = self.iter_dir(i)
        evaluated = Evaluation.load(it_dir / "eval.json", i).model_dir if (it_dir / "eval.json").is_file() else None
        if evaluated:
            path = Path(evaluated)
            return path if path.is_absolute() else self.path / path
        if i == 0:
            return Path(self.read_state().get("base_model", ""))
        # Runs evaluated before eval.json named its model folder: the train stage's output.
        path = Path(read_json(it_dir / "train.json")["model"])
        return path if path.is_absolute() else it_dir / path

    def train_file(self, i: int) -> tuple[Path, type] | None:
        """The training-record file the filter stage of iteration `i` wrote and its record type; None before it ran."""
        for cls, name in TRAIN_FILES.items():
            path = self.iter_dir(i) / name
            if path.is_file():
                return path, cls
        return None

    def train_records(self, i: int) -> list[Example | Pair] | None:
        """The training records the filter stage of iteration `i` wrote (Examples or Pairs); None before it ran."""
        found = self.train_file(i)
        return load_records(*found) if found else None

    def stage_outputs(self, i: int, key: str) -> list[Path]:
        """Files of iteration `i` that its stage summaries name under `key` ('samples_file', 'verdicts_file').

        A recipe may sample more than once in an iteration (STaR's hinted retries write
        rationalize-samples.jsonl); the lineage and the audits read every such file. A run from before the
        summaries named their files has the two plain ones.
        """
        it_dir = self.iter_dir(i)
        names = {read_json(p).get(key) for p in sorted(it_dir.glob("*.json"))} - {None}
        if not names:
            names = {"samples.jsonl" if key == "samples_file" else "verdicts.jsonl"}
        return [it_dir / n for n in sorted(names) if (it_dir / n).is_file()]

    def iteration_rows(self, i: int, key: str) -> list[dict[str, Any]]:
        """Every row of the files `stage_outputs(i, key)` names (samples or verdicts, as dicts)."""
        return [row for path in self.stage_outputs(i, key) for row in read_jsonl(path)]

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
        for i, evaluation in self.evaluations().items():
            it_dir = self.iter_dir(i)
            row: dict[str, Any] = {"iteration": i, **evaluation.metrics, **evaluation.figures()}
            seconds = {}
            # The built-in stages first, then any a recipe ran of its own (a hinted retry, a critique, ...).
            own = sorted(p.stem for p in it_dir.glob("*.json") if p.stem not in STAGES and "." not in p.stem)
            for stage in (*STAGES, *own):
                summary = it_dir / f"{stage}.json"
                if summary.is_file():
                    data = read_json(summary)
                    seconds[stage] = data.get("seconds")
                    if stage == "filter":  # a recipe's own selection step may count other things
                        row["kept"] = data.get("kept")
                        row["problems_solved"] = data.get("problems_solved")
                        if "passed" in data and "samples" in data:
                            row["train_pass_rate"] = data["passed"] / max(1, data["samples"])
                        row["contaminated"] = data.get("contaminated", 0)
                        for key in JUDGE_FIGURES:  # a judged recipe's figures about its judge
                            if data.get(key) is not None:
                                row[f"judge/{key}"] = data[key]
            row["seconds"] = seconds
            rows.append(row)
        return rows

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path) if self.metrics_path.is_file() else []
