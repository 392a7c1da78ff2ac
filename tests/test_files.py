import pytest

from selfplay.errors import UserError
from selfplay.files import JsonlAppender, atomic_write_json, read_json, read_jsonl, recover_partial_jsonl


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_torn_last_line_is_detected_and_cut(tmp_path):
    path = tmp_path / "s.partial.jsonl"
    with JsonlAppender(path) as out:
        out.write_many([{"id": 1}, {"id": 2}])
    with open(path, "a") as f:
        f.write('{"id": 3, "compl')  # the process died mid-write
    rows, torn = recover_partial_jsonl(path)
    assert rows == [{"id": 1}, {"id": 2}] and torn


def test_clean_partial_file_is_not_torn(tmp_path):
    path = tmp_path / "s.partial.jsonl"
    with JsonlAppender(path) as out:
        out.write_many([{"id": 1}])
    assert recover_partial_jsonl(path) == ([{"id": 1}], False)
    assert recover_partial_jsonl(tmp_path / "missing.jsonl") == ([], False)


def test_damage_in_the_middle_is_an_error_not_a_silent_drop(tmp_path):
    path = tmp_path / "s.partial.jsonl"
    path.write_text('{"id": 1}\n{"id": \n{"id": 3}\n')
    with pytest.raises(UserError, match="line 2"):
        recover_partial_jsonl(path)


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(UserError, match=r"d.jsonl: line 3: expected a JSON object"):
        read_jsonl(path)
