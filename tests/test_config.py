from pathlib import Path

import pytest
import yaml

from selfplay import config as configlib
from selfplay.errors import UserError


def test_defaults_validate_and_starter_yaml_loads_back_to_them(tmp_path):
    starter = tmp_path / "s.yaml"
    starter.write_text(configlib.starter_yaml())
    assert configlib.load_config(starter) == configlib.RunConfig()
    assert "# Problems in the training split." in starter.read_text()


def test_unknown_key_names_file_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"lerning_rate": 0.1}}))
    with pytest.raises(UserError) as e:
        configlib.load_config(path)
    assert str(e.value) == f"{path}: unknown key 'train.lerning_rate'; did you mean 'train.learning_rate'?"


def test_wrong_type_names_field_and_value():
    with pytest.raises(UserError) as e:
        configlib.load_config(None, ["train.epochs=three"])
    assert "train.epochs" in str(e.value) and "'three'" in str(e.value)


def test_overrides_parse_yaml_scalars_and_nest():
    cfg = configlib.load_config(None, ["train.epochs=3", "task.params={min_terms: 2, max_terms: 2}", "name=x1"])
    assert cfg.train.epochs == 3.0
    assert cfg.task.params == {"min_terms": 2, "max_terms": 2}
    assert cfg.run_dir == Path("runs/x1")


def test_iteration_cap_is_enforced():
    with pytest.raises(UserError, match="iterations"):
        configlib.load_config(None, [f"iterations={configlib.MAX_ITERATIONS + 1}"])


def test_jsonl_source_needs_a_path_and_pass_k_needs_samples():
    with pytest.raises(UserError, match="task.path"):
        configlib.load_config(None, ["task.source=jsonl"])
    with pytest.raises(UserError, match="eval.pass_k"):
        configlib.load_config(None, ["eval.samples=2", "eval.pass_k=4"])


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: a\ntrain: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml: line \d+"):
        configlib.load_config(path)


def test_diff_ignores_location_but_not_settings():
    a = configlib.load_config(None, [])
    b = configlib.load_config(None, ["output_dir=elsewhere", "train.learning_rate=0.001"])
    assert configlib.diff(a, b) == ["train.learning_rate"]
