import pytest

from selfplay.config import TaskConfig
from selfplay.errors import UserError
from selfplay.loop.driver import check_disjoint
from selfplay.records import Problem
from selfplay.tasks import ANSWER_INSTRUCTION, build_task
from tests.conftest import write_jsonl


def _questions(problems):
    return {p.meta["question"] for p in problems}


def test_reasoning_gym_split_is_disjoint_deterministic_and_sized():
    cfg = TaskConfig(train_size=40, eval_size=30, seed=7)
    a, b = build_task(cfg).split(), build_task(cfg).split()
    assert len(a.train) == 40 and len(a.heldout) == 30
    assert not _questions(a.train) & _questions(a.heldout)
    assert a.exemplar.meta["question"] not in _questions(a.train) | _questions(a.heldout)
    assert [p.id for p in a.train] == [p.id for p in b.train]
    assert [p.id for p in a.heldout] == [p.id for p in b.heldout]
    other = build_task(TaskConfig(train_size=40, eval_size=30, seed=8)).split()
    assert [p.id for p in other.heldout] != [p.id for p in a.heldout]


def test_prompt_shows_the_exemplar_and_the_answer_format():
    split = build_task(TaskConfig(train_size=3, eval_size=3)).split()
    p = split.train[0]
    assert p.prompt.endswith(ANSWER_INSTRUCTION)
    assert f"Answer: {split.exemplar.reference}" in p.prompt
    assert p.meta["question"] in p.prompt
    plain = build_task(TaskConfig(train_size=3, eval_size=3, one_shot=False)).split()
    assert plain.exemplar is None and "Example" not in plain.train[0].prompt


def test_jsonl_split_covers_distinct_prompts(sums_jsonl):
    split = build_task(TaskConfig(source="jsonl", path=str(sums_jsonl), train_size=20, eval_size=9)).split()
    assert len(split.train) == 20 and len(split.heldout) == 9
    assert not _questions(split.train) & _questions(split.heldout)


def test_jsonl_solution_is_shown_for_the_exemplar(tmp_path):
    rows = [{"prompt": f"{i} + 1 =", "answer": str(i + 1), "solution": f"{i} plus one is {i + 1}"} for i in range(5)]
    split = build_task(TaskConfig(source="jsonl", path=str(write_jsonl(tmp_path / "s.jsonl", rows)),
                                  train_size=2, eval_size=2)).split()
    ex = split.exemplar
    assert f"{ex.meta['question']}\n{ex.meta['solution']}\nAnswer: {ex.reference}\n" in split.train[0].prompt


def test_jsonl_with_duplicate_prompts_never_leaks_across_the_split(tmp_path):
    rows = [{"prompt": f"Q{i % 10}", "answer": str(i % 10)} for i in range(40)]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    split = build_task(TaskConfig(source="jsonl", path=str(path), train_size=5, eval_size=4)).split()
    assert not _questions(split.train) & _questions(split.heldout)
    with pytest.raises(UserError, match="has 10 distinct problems"):
        build_task(TaskConfig(source="jsonl", path=str(path), train_size=8, eval_size=4)).split()


def test_check_disjoint_refuses_a_leak():
    p = Problem("x", "prompt", "1", {"question": "What is 1?"})
    with pytest.raises(UserError, match="held-out problems also appear"):
        check_disjoint([p], [Problem("y", "other prompt", "1", {"question": "What is 1?"})])


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": \n', r"line 2: malformed JSON"),
        ('{"prompt": "a", "answer": " "}\n', r"line 1: needs a non-empty 'answer'"),
        # A file of questions only runs label-free; a file with some answers missing is a mistake.
        ('{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n', r"line 2: has no 'answer' but line 1 has one"),
        ("\n\n", r"no problems in the file"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        build_task(TaskConfig(source="jsonl", path=str(path), train_size=1, eval_size=1)).split()


def test_unknown_dataset_and_bad_params_are_clear():
    with pytest.raises(UserError, match="did you mean 'chain_sum'"):
        build_task(TaskConfig(dataset="chain_sums")).split()
    with pytest.raises(UserError, match="task.params: invalid"):
        build_task(TaskConfig(params={"bogus": 1})).split()


def test_fresh_variants_are_new_problems_rendered_like_the_split():
    from selfplay.config import TaskConfig
    from selfplay.tasks import build_task, fresh_problems

    cfg = TaskConfig(train_size=20, eval_size=20)
    split = build_task(cfg).split()
    seen = {p.meta["question"].strip() for p in split.train + split.heldout}
    fresh, note = fresh_problems(build_task(cfg), 15, seed=12345, exclude=seen, exemplar=split.exemplar)
    assert note is None and len(fresh) == 15 and len({p.id for p in fresh}) == 15
    assert not {p.meta["question"].strip() for p in fresh} & seen
    # The same exemplar and instruction as the training prompts, so accuracy is comparable.
    head = split.train[0].prompt.split(split.train[0].meta["question"])[0]
    assert all(p.prompt.startswith(head) for p in fresh)
    assert {p.meta["category"] for p in fresh} <= {"+", "-", "*"}
    fixed = build_task(TaskConfig(source="jsonl", path="x.jsonl"))
    found, note = fresh_problems(fixed, 5, 1, set(), None)
    assert found == [] and "cannot draw new problems" in note
