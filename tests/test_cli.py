"""The CLI end to end on the tiny model, and every bad input a user can give it."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from selfplay.cli import main
from selfplay.files import read_jsonl
from selfplay.loop.rundir import RunDir
from tests.conftest import run_cli, tiny_overrides

pytestmark = pytest.mark.e2e


def _snapshot(folder):
    """Modification times of a run's files (the lock file, which each process rewrites, left out)."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".lock"
    }


def test_run_end_to_end_then_rerun_redoes_nothing(tiny_model, sums_jsonl, tmp_path, capsys):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, iterations=2)
    proc = run_cli("run", *args)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "t"
    # The summary table: the base model and both iterations.
    table = proc.stdout[proc.stdout.index("iter  greedy acc") :].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["0", "1", "2"]

    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    assert metrics[1]["kept"] == 6 and metrics[1]["problems_solved"] == 6  # PassFirst: one per problem
    assert set(metrics[2]["seconds"]) == {"generate", "verify", "filter", "train", "eval"}
    for i in (1, 2):
        it = run / f"iter-{i:03d}"
        samples = read_jsonl(it / "samples.jsonl")
        assert len(samples) == 12 and len({s["id"] for s in samples}) == 12
        assert len(read_jsonl(it / "verdicts.jsonl")) == 12
        train = read_jsonl(it / "train.jsonl")
        # Lineage: every example names the sample and problem it came from.
        ids = {s["id"]: s for s in samples}
        assert all(ids[e["sample_id"]]["problem_id"] == e["problem_id"] for e in train)
        assert json.loads((it / "train.json").read_text())["model"] == "model"
        assert (it / "model" / "model.safetensors").is_file()
    # Iteration 2 sampled from iteration 1's model and trained from the base (the default).
    assert json.loads((run / "iter-002" / "generate.json").read_text())["model"] == str(run / "iter-001" / "model")
    assert json.loads((run / "iter-002" / "train.json").read_text())["init_from"] == str(tiny_model)
    frozen = yaml.safe_load((run / "config.yaml").read_text())
    assert frozen["iterations"] == 2 and frozen["task"]["train_size"] == 6
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "finished" and state["best_iteration"] == 0 and state["stage"] is None

    # The rerun and the eval in this process (the run above was the CLI's own process): the same code path,
    # without a second and third start of Python and its libraries.
    before = _snapshot(run)
    assert main(["run", *args]) == 0
    after = _snapshot(run)
    changed = {k for k in before if before[k] != after.get(k)}
    # No stage ran again: only the files rebuilt from the stage files at the end of every run changed.
    changed = {k for k in changed if not k.startswith("tensorboard/")}
    assert changed <= {"state.json", "metrics.jsonl", "report.html"}, changed

    # The trained model evaluates through `selfplay eval`, on the same task settings.
    out = tmp_path / "eval-out"
    capsys.readouterr()
    assert main(["eval", str(run / "iter-002" / "model"), "--config", str(run / "config.yaml"), "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["problems"] == 4 and "pass@2" in result
    assert len(read_jsonl(out / "eval" / "eval_samples.jsonl")) == 4


def test_changed_config_is_refused_unless_allowed(tiny_model, sums_jsonl, tmp_path, capsys):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, iterations=1)
    assert main(["run", *args]) == 0
    run = tmp_path / "t"
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["resume", str(run), "filter.max_per_problem=1"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "changed: filter.max_per_problem" in err
    assert _snapshot(run) == before  # nothing written, nothing lost
    # Allowed explicitly: the change is recorded and the old config kept beside it.
    assert main(["resume", str(run), "iterations=2", "--allow-config-change"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["iterations"] == 2
    assert len(list((run / "config-history").iterdir())) == 1
    assert [m["iteration"] for m in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2]


def test_a_second_process_on_the_same_run_is_refused(tiny_model, sums_jsonl, tmp_path):
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path)
    holder = RunDir(tmp_path / "t")
    holder.create()
    holder.lock()
    try:
        proc = run_cli("run", *args)
    finally:
        holder.unlock()
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"selfplay: error: {tmp_path / 't'}: the run is in use by another selfplay process (pid {os.getpid()})"
    )


def test_init_writes_a_starter_config_that_runs_as_is(tmp_path, capsys):
    path = tmp_path / "starter.yaml"
    assert main(["init", str(path)]) == 0
    assert main(["init", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err
    from selfplay.config import RunConfig, load_config

    assert load_config(path) == RunConfig()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"trian.epochs": 2}, "unknown key 'trian'; did you mean 'train'?"),
        ({"train.lora_rank": 8}, "unknown key 'train.lora_rank'; did you mean 'train.lora_r'?"),
        ({"train.epochs": "lots"}, "train.epochs"),
        ({"model.path": "/nonexistent/model"}, "model.path: '/nonexistent/model' is not a folder"),
        ({"task.source": "reasoning_gym", "task.dataset": "chain_summ"}, "unknown reasoning-gym dataset 'chain_summ'"),
        ({"task.path": "/nonexistent/data.jsonl"}, "task.path: file not found"),
        ({"task.train_size": 500}, "distinct problems, but train_size + eval_size"),
        ({"verify.verifier": "judgy"}, "verify.verifier: unknown 'judgy'"),
        ({"guards.gold_verifier": "goldy"}, "guards.gold_verifier: unknown 'goldy'"),
        ({"guards.control": "[{name: c, path: 'builtin:trivia'}]"}, "builtin:trivia: no such built-in data file"),
        ({"guards.control": "[{name: c}]"}, "guards.control.0.path: required when source is 'jsonl'"),
        ({"stop.metric": "pass@8"}, "stop.metric: 'pass@8' is not measured"),
        ({"review.every": -1}, "review.every"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tiny_model, sums_jsonl, tmp_path, capsys, extra, message):
    code = main(["run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, **extra)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("selfplay: error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


def test_malformed_task_line_and_empty_task_set(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2" "answer": "4"}\n')
    assert main(["run", *tiny_overrides(tiny_model, bad, tmp_path)]) == 2
    assert f"{bad}: line 2: malformed JSON" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["run", *tiny_overrides(tiny_model, empty, tmp_path)]) == 2
    assert f"{empty}: no problems in the file" in capsys.readouterr().err


def test_missing_config_file_and_unwritable_run_folder(tiny_model, sums_jsonl, tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = tiny_overrides(tiny_model, sums_jsonl, blocker / "runs")
    assert main(["run", *args]) == 2
    assert "cannot write the run folder" in capsys.readouterr().err


def test_overrides_after_options_are_applied_and_strays_refused(tiny_model, sums_jsonl, tmp_path, capsys):
    # `task.train_size=500` comes after `--task`; it is applied, so the split fails for want of problems.
    out = tmp_path / "ev"
    code = main(["eval", str(tiny_model), "--task", str(sums_jsonl), "--out", str(out), "task.train_size=500"])
    assert code == 2 and "distinct problems, but train_size + eval_size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tiny_model), "--task", str(sums_jsonl), "stray"])
    assert e.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err


def test_run_commands_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    for args in (["report", str(tmp_path)], ["review", str(tmp_path)], ["approve", str(tmp_path)],
                 ["reject", str(tmp_path)], ["export", str(tmp_path), str(tmp_path / "out")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a run folder" in err, (args, err)


def test_eval_with_another_dataset_starts_from_its_own_defaults(tiny_model, tmp_path):
    # The default config's arithmetic `task.params` must not follow a dataset named on the command line.
    out = tmp_path / "ev"
    proc = run_cli("eval", str(tiny_model), "--task", "spell_backward", "--out", str(out), "task.train_size=4",
                   "task.eval_size=3", "eval.samples=0", "eval.max_new_tokens=4")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["task"] == "reasoning_gym:spell_backward" and result["problems"] == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["task"]["params"] == {}


def test_an_empty_argument_says_what_was_wrong(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "configs/rft-default.yaml", ""])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument 3 is empty ('')" in err


def test_a_config_naming_another_dataset_gets_that_datasets_defaults():
    from selfplay.config import ARITHMETIC_PARAMS, load_config

    assert load_config(None).task.params == ARITHMETIC_PARAMS  # the tuned default task
    assert load_config(None, ["task.dataset=spell_backward"]).task.params == {}
    assert load_config(None, ["task.dataset=chain_sum", "task.params={min_terms: 2}"]).task.params == {"min_terms": 2}
