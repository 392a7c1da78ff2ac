"""What every benchmark's `--smoke` mode shares. A helper module, not a benchmark.

`--smoke` runs a benchmark's own code path end to end at its smallest size, on the tiny random model the tests
build (tests/conftest.py), in a scratch folder, in seconds. It shows that the script still runs, never how well
anything does: the tiny model's answers are random. A smoke run prints its table and writes nothing into
docs/BENCHMARKS.md. tests/test_benchmarks.py runs every script under benchmarks/ this way.

A benchmark that cannot do what it was asked (a backend that needs a server, a config that does not exist,
a missing model) prints one line naming the script and the reason, and exits 2, as the CLI does.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "src"):  # tests.conftest for the tiny model; selfplay without an install
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from selfplay.errors import UserError  # noqa: E402

# Config overrides that shrink any run to a few seconds on the tiny model (tests/conftest.py's tiny_overrides, with
# the config's own task and verifier kept): the tiny model never ends an answer before the cap, so capped samples
# are kept, and the embedding model of the diversity guard is not loaded.
TINY_RUN = [
    "iterations=1", "task.train_size=4", "task.eval_size=4", "generate.samples_per_problem=2",
    "generate.max_new_tokens=6", "generate.batch_size=8", "eval.samples=2", "eval.pass_k=2", "eval.max_new_tokens=6",
    "train.batch_size=4", "train.epochs=1", "filter.drop_truncated=false", "guards.fresh_size=4",
    "guards.embeddings=false", "rl.steps=2", "rl.prompts_per_step=2", "rl.num_generations=2",
    "guards.control=[{name: general_knowledge, path: 'builtin:general_knowledge', size: 4, one_shot: false, "
    "verifier: contains}]",
]


def add_flags(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """`--smoke`, and `--model PATH` (a folder or embedded:NAME) where the benchmark loads a model."""
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest run: the tiny random test model, tiny sizes, a scratch folder; "
                             "prints its table, writes nothing into docs/BENCHMARKS.md")
    if model:
        parser.add_argument("--model", help="the model to measure (a folder or embedded:NAME); with --smoke, "
                                            "a tiny test model already built (else one is built)")


def scratch(prefix: str = "bench-smoke-") -> Path:
    """A temporary folder, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def tiny_model(given: str | None) -> str:
    """The model a smoke run uses: the one handed in, else the tests' tiny random model, built in a scratch folder.

    Also puts torch, here and in the processes this one starts, on one thread: the tiny model's matmuls gain nothing
    from more, and on a busy machine the threads wait on each other (a smoke run took twice as long with two).
    """
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    if given:
        return given
    from tests.conftest import build_tiny_model

    return str(build_tiny_model(scratch("bench-tiny-model-")))


def fail(message: str) -> NoReturn:
    """One line naming the script and what went wrong, exit status 2: a user's mistake, not a traceback."""
    print(f"{Path(sys.argv[0]).name}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def entry(main: Callable[[], object]) -> None:
    """Run a benchmark's main, turning the project's UserError into `fail`'s one line."""
    try:
        main()
    except UserError as e:
        fail(str(e))
