"""The reshaped loop decides exactly what the RFT loop before it decided, on the tiny model.

`tests/golden/tiny_run.json` was extracted from a run of the code before "One loop, many recipes" (commit
9ddf0f1) with the config below. It holds what the wiring decides, not what the random weights say, so it
does not depend on floating-point details of a machine: the split and every prompt as rendered, the seeds
and sampling settings of every generate call, which model each iteration sampled from and trained from,
which samples passed and became training examples, the training steps, the files each iteration wrote, the
evaluation sets and the stop rules' decisions. (The real default job was re-run too: docs/BENCHMARKS.md.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfplay.cli import main
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.e2e

GOLDEN = Path(__file__).parent / "golden" / "tiny_run.json"
# Guards whose status follows from the wiring alone (mode collapse and the proxy audit read the random text).
WIRED_GUARDS = ("contamination", "degradation", "persistent_failures")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def facts(run: Path, base: Path) -> dict:
    """The float-free facts of a run folder."""

    def where(model: str) -> str:
        return "base" if Path(model) == base else str(Path(model).relative_to(run))

    out: dict = {"problems": {}, "iterations": {}}
    for name in ("train", "heldout", "exemplar", "control-gk"):
        out["problems"][name] = [[r["id"], r["prompt"]] for r in _rows(run / "problems" / f"{name}.jsonl")]
    for it in sorted(run.glob("iter-*")):
        f: dict = {"files": sorted(p.name for p in it.iterdir() if p.name != "model" and not p.name.startswith("."))}
        if (it / "generate.json").is_file():
            g = json.loads((it / "generate.json").read_text())
            f["generate"] = {"params": g["params"], "samples": g["samples"], "model": where(g["model"])}
            f["sample_ids"] = [r["id"] for r in _rows(it / "samples.jsonl")]
            f["passed"] = [r["sample_id"] for r in _rows(it / "verdicts.jsonl") if r["passed"]]
            f["examples"] = [r["id"] for r in _rows(it / "train.jsonl")]
            t = json.loads((it / "train.json").read_text())
            f["train"] = {"steps": t["steps"], "examples": t["examples"], "init_from": where(t["init_from"])}
        e = json.loads((it / "eval.json").read_text())
        f["eval"] = {"metric_keys": sorted(e["metrics"]), "problems": e["metrics"]["problems"],
                     "sets": sorted(e["sets"]), "guards": {k: e["guards"][k]["status"] for k in WIRED_GUARDS},
                     "decision": {k: e["decision"][k] for k in ("action", "iteration", "best_iteration", "degraded")}}
        out["iterations"][it.name] = f
    return out


def test_a_tiny_rft_run_decides_what_the_loop_before_the_change_decided(tiny_model, sums_jsonl, tmp_path):
    # The golden run sampled with transformers generate (the only backend then); the default backend draws
    # other samples from the same distribution, in another order, so this comparison keeps generate.
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, iterations=2,
                          **{"eval.batch_size": 8, "generate.backend": "transformers"})
    assert main(["run", *args]) == 0
    assert facts(tmp_path / "t", tiny_model) == json.loads(GOLDEN.read_text())
