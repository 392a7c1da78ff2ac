"""Generation backends for the label-free tests, loaded by 'module:attr' as a user's own would be.

A random tiny model rarely agrees with itself, so these make the votes predictable:
- `echo_backend`: the real tiny model's completion, then everything the backend was handed about the problem
  (its reference and meta, which is where a leaked label would be), then `Answer: 7`. Every sample agrees, so the
  run trains; a label that reached generation shows in samples.jsonl and train.jsonl (the canary test).
- `voter_backend`: a scripted model of sums ("What is a + b?"), whose answers depend on which iteration's model it
  is (the path names it), to plant wrong majorities that stay, spread, get fixed or grow on held-out problems.
  It computes sums from the question, as a model would: it is never handed a label.
"""

from __future__ import annotations

import json
import re

from selfplay.generation import transformers_backend
from selfplay.interfaces import Completion


def echo_backend(model_path, where):
    inner = transformers_backend(model_path, where)

    class Echo:
        model_name = inner.model_name

        def generate(self, problems, params, batch_size):
            for batch in inner.generate(problems, params, batch_size):
                out = []
                for p, completions in batch:
                    seen = f"{p.reference} {json.dumps(p.meta)}"
                    out.append((p, [Completion(f"{c.text}\n{seen}\nAnswer: 7", c.num_tokens, c.finish_reason)
                                    for c in completions]))
                yield out

        def close(self):
            inner.close()

    return Echo()


def _iteration(model_path) -> int:
    found = re.search(r"iter-(\d+)", str(model_path))
    return int(found[1]) if found else 0


def entrench_votes(a: int, b: int, iteration: int) -> list[str]:
    """Four answers to a + b. The base model is confidently wrong everywhere (a + b + 1: three votes and an
    unreadable one, or all four when a % 3 == 1); the trained model then keeps the wrong answer with more votes
    (a % 3 == 0: spread), gets it right (a % 3 == 1: fixed), or moves to another wrong answer (a % 3 == 2)."""
    wrong, right = a + b + 1, a + b
    if iteration == 0:
        return [str(wrong)] * 4 if a % 3 == 1 else [str(wrong)] * 3 + [None]
    return {0: [str(wrong)] * 4, 1: [str(right)] * 4, 2: [str(a + b + 2)] * 3 + [None]}[a % 3]


def ceiling_votes(a: int, b: int, iteration: int) -> list[str]:
    """Right and unanimous from the base model; unanimous and wrong once trained: the held-out majority falls."""
    return [str(a + b if iteration == 0 else a + b + 1)] * 4


SCRIPTS = {"entrench": entrench_votes, "ceiling": ceiling_votes}


def voter_backend(model_path, where, script: str = "entrench"):
    votes = SCRIPTS[script]
    iteration = _iteration(model_path)

    class Voter:
        model_name = str(model_path)

        def generate(self, problems, params, batch_size):
            for start in range(0, len(problems), batch_size):
                batch = []
                for p in problems[start : start + batch_size]:
                    numbers = [int(x) for x in re.findall(r"\d+", p.meta.get("question", ""))]
                    said = votes(numbers[0], numbers[1], iteration) if len(numbers) >= 2 else [None] * 4
                    texts = [f"Answer: {said[k % 4]}" if said[k % 4] else "no idea" for k in range(params.n)]
                    batch.append((p, [Completion(t, 3, "stop") for t in texts]))
                yield batch

        def close(self):
            pass

    return Voter()
