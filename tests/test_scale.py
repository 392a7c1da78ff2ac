"""Scale-out on a real Ray cluster on loopback (a head and two worker nodes, each its own raylet): a run's
sampling, verify and evaluation stages on the workers, with the same files as a local run, and the faults.

Each test is bounded in time, and the cluster fixture checks that no raylet outlives it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfplay.config import load_config
from selfplay.errors import UserError
from selfplay.files import read_jsonl
from selfplay.interfaces import SamplingParams
from selfplay.records import Problem, to_dict
from selfplay.scale import Handout, RayWorkers
from selfplay.scale.fanout import handout_size
from tests.conftest import ROOT, run_cli, tiny_overrides
from tests.test_code import code_overrides, needs_bwrap
from tests.test_resume import _kill_when, _line_count, _wait_until

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'selfplay[ray]')")
pytestmark = pytest.mark.e2e

ENV = f"{{PYTHONPATH: '{ROOT}'}}"  # the workers import the tests' plugins, as a user's workers import theirs


def _ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if "raylet" in line or "gcs_server" in line or "ray::" in line]


def _left_over(before: set[str], deadline_s: float = 30) -> set[str]:
    """The Ray processes started since `before` that are still running after up to `deadline_s` seconds."""
    deadline = time.monotonic() + deadline_s
    while (left := set(_ray_processes()) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="module")
def cluster():
    """A head node that runs no work and two worker nodes of 1 CPU each: the workers' actors land on those."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    before = set(_ray_processes())
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(num_cpus=1)
        c.wait_for_nodes(timeout=60)
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        left = _left_over(before)
        assert not left, f"Ray processes outlived the cluster: {left}"


def _busy_workers(deadline_s: float = 120) -> list[int]:
    """The pids of the stage workers running a handout now (their process title names the method)."""
    deadline = time.monotonic() + deadline_s
    while not (pids := [int(line.split()[0]) for line in _ray_processes() if "StageWorker.generate" in line]):
        assert time.monotonic() < deadline, "no worker started generating"
        time.sleep(0.02)
    return pids


def test_handouts_fill_a_batch_and_give_each_worker_two():
    assert handout_size(96, 8, 64, 2, None) == 8  # 8 problems x 8 samples fill a batch of 64
    assert handout_size(100, 1, 64, 2, None) == 25  # greedy: at least two handouts per worker
    assert handout_size(3, 8, 64, 4, None) == 1 and handout_size(50, 1, 64, 2, 7) == 7


def test_evaluation_puts_samples_back_in_the_problems_order_whatever_order_the_workers_return_them(tiny_model):
    """Ray hands results back as handouts finish. Self-BLEU draws a seeded subset of over 100 texts by position, so
    an evaluation that kept arrival order would give the same samples a different figure on the cluster."""
    from selfplay.generation import build_generator, sample_batches
    from selfplay.guards.diversity import self_bleu
    from selfplay.loop.evaluation import _in_order
    from selfplay.models import placement

    texts = [f"answer {n} is {n * 7 % 13} then {n % 5} and {n * 3}" for n in range(150)]
    assert self_bleu(texts) != self_bleu(texts[::-1])  # why the order matters

    class FinishedBackwards:  # the real decoder, its batches handed back last first as a slow first worker would
        def __init__(self, inner):
            self.inner, self.model_name = inner, inner.model_name

        def generate(self, problems, params, batch_size):
            return iter(list(self.inner.generate(problems, params, batch_size))[::-1])

    gen = build_generator("continuous", tiny_model, placement("cpu", "float32"), {})
    try:
        problems = [Problem(f"p{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(6)]
        params = SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=3)
        plain = [s for b in sample_batches(gen, problems, params, 4) for s in b]
        backwards = [s for b in sample_batches(FinishedBackwards(gen), problems, params, 4) for s in b]
        assert [s.problem_id for s in backwards] != [s.problem_id for s in plain]
        assert _in_order(FinishedBackwards(gen), problems, params, 4, "t") == plain
    finally:
        gen.close()


def test_scale_settings_are_checked_and_may_change_on_resume(tmp_path):
    with pytest.raises(UserError, match="scale.ray_address: empty"):
        load_config(None, ["scale.ray_address=' '"])
    with pytest.raises(UserError, match="scale.workers"):
        load_config(None, ["scale.workers=0"])
    from selfplay.config import diff

    a, b = load_config(None, []), load_config(None, ["scale.ray_address=auto", "scale.workers=8"])
    assert diff(a, b) == []  # where the stages run is not what the run does: resume may move it


def test_no_ray_means_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def without_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_ray)
    workers = RayWorkers(load_config(None, ["scale.ray_address=local"]).scale, "cpu", "float32", "continuous", {})
    with pytest.raises(UserError, match=r"Ray is not installed; install it with: pip install 'selfplay\[ray\]'"):
        list(workers.run([Handout("p0", "whoami", ())]))


def test_a_cluster_that_wants_a_token_is_one_line_saying_how_to_give_it(monkeypatch):
    """Ray 2.59+ turns token authentication on for `ray start --head`. A driver without the token gets, from
    ray.init, a ConnectionError whose causes hold Ray's InvalidAuthToken (as seen against a real head, Ray 2.60);
    the run says what to set instead of suggesting to start a cluster that is already there."""
    from ray.exceptions import AuthenticationError

    def refused(**kwargs):
        try:
            raise RuntimeError("Failed to connect to GCS.") from AuthenticationError(
                "RPC error: InvalidAuthToken: Authentication token is missing or incorrect.")
        except RuntimeError as e:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from e

    monkeypatch.setattr(ray, "init", refused)
    workers = RayWorkers(load_config(None, ["scale.ray_address=auto"]).scale, "cpu", "float32", "continuous", {})
    with pytest.raises(UserError) as e:
        workers._connect()
    line = str(e.value)
    assert "\n" not in line and "refused this machine's token" in line and "RAY_AUTH_MODE=token" in line
    assert "10.0.0.1:6379" in line and "ray start --head`, or use" not in line


def _workers(cluster, **scale) -> RayWorkers:
    settings = [f"scale.ray_address={cluster.address}", "scale.workers=2",
                *(f"scale.{k}={v}" for k, v in scale.items())]
    return RayWorkers(load_config(None, settings).scale, "cpu", "float32", "continuous", {})


PROBLEMS = [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1)) for i in range(6)]


def _generate(tiny_model, problems, n=3, tokens=8) -> list[Handout]:
    params = {"n": n, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": tokens, "seed": 3}
    return [Handout(p.id, "generate", (str(tiny_model), [to_dict(p)], params, 8), [p.id]) for p in problems]


def test_a_dead_or_hung_worker_loses_nothing_and_doubles_nothing_and_an_unreadable_model_is_one_line(
        cluster, tiny_model):
    from selfplay.generation import build_generator
    from selfplay.models import placement

    local = build_generator("continuous", tiny_model, placement("cpu", "float32"), {})
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=3)
    expected = {p.id: [c.text for c in cs] for batch in local.generate(PROBLEMS, params, 8) for p, cs in batch}

    workers = _workers(cluster, task_timeout=5, max_retries=2)  # a warm handout here takes well under a second
    stopped = None
    try:
        # Both workers load the model and answer once (warm, so the hung one is held to task_timeout alone); their pids.
        list(workers.run(_generate(tiny_model, PROBLEMS[:2], tokens=1)))
        names = [name for _, name in workers.run([Handout("w0", "whoami", ()), Handout("w1", "whoami", ())])]
        pids = sorted({int(name.rsplit(" pid ", 1)[1]) for name in names})
        assert len(pids) == 2
        got = {}
        for _, (_, results) in workers.run(_generate(tiny_model, PROBLEMS, tokens=24)):
            for pid, cs in results:
                assert pid not in got, f"{pid} came back twice"
                got[pid] = [c["text"] for c in cs]
            if stopped is None:  # after the first result: one worker hangs and the other dies
                stopped = pids[0]
                os.kill(stopped, signal.SIGSTOP)
                os.kill(pids[1], signal.SIGKILL)
        # the same samples a local run draws: seeded by problem and sample, whoever drew them and however often
        assert got == expected
        assert workers.replaced == 2  # the dead one and the hung one, each replaced once

        # A model the workers cannot read: one line naming the worker and the path, not a hang or a retry.
        missing = tiny_model.parent / "nowhere"
        with pytest.raises(UserError) as e:
            list(workers.run(_generate(missing, PROBLEMS[:2])))
        line = str(e.value)
        assert "\n" not in line and f"cannot read the model at {missing} (no such folder)" in line
        assert line.startswith("Ray worker ") and " pid " in line
    finally:
        if stopped:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
        workers.shutdown()


def test_a_handout_that_keeps_failing_stops_with_one_line_naming_the_problem(cluster, tiny_model):
    workers = _workers(cluster, task_timeout=0.01, startup_timeout=0, max_retries=1)  # no worker is that fast
    try:
        with pytest.raises(UserError) as e:
            list(workers.run(_generate(tiny_model, PROBLEMS[:1], tokens=16)))
        assert "\n" not in str(e.value)
        assert str(e.value).startswith("Ray: problem p0 failed 2 times: no answer within scale.task_timeout")
        assert "scale.max_retries is 1" in str(e.value)
    finally:
        workers.shutdown()


def _samples(run: Path) -> dict[str, str]:
    return {r["id"]: r["completion"] for r in read_jsonl(run / "iter-001" / "samples.jsonl")}


# One problem per handout, each a moment slower than the continuous backend alone (the same samples), so a kill
# lands while a worker is generating.
LONG = {"task.train_size": 16, "generate.batch_size": 2, "generate.max_new_tokens": 24, "scale.problems_per_task": 1,
        "generate.backend": "tests.plugins:slow_backend", "generate.options": "{delay: 0.3}"}


def test_an_rft_iteration_on_the_cluster_writes_a_local_runs_samples_through_a_worker_kill_a_driver_kill_and_a_resume(
        cluster, tiny_model, sums_jsonl, tmp_path):
    # The local run needs no delay: the slow backend's samples are the continuous backend's whatever the delay.
    proc = run_cli("run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, name="local",
                                          **{**LONG, "generate.options": "{delay: 0}"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _samples(tmp_path / "local")

    # Two workers; one is SIGKILLed in the middle of generation, then (once its problem was handed to another
    # worker and more samples came in) the driver is, and the run resumes on the cluster with one worker.
    run = tmp_path / "ray"
    args = tiny_overrides(tiny_model, sums_jsonl, tmp_path, name="ray", **LONG, **{
        "scale.ray_address": cluster.address, "scale.workers": 2, "scale.env": ENV})
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "selfplay", "run", *args], cwd=ROOT, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT)
    partial = run / "iter-001" / "samples.partial.jsonl"
    try:
        _wait_until(driver, lambda: _line_count(partial) >= 4, poll=0.05)
        os.kill(_busy_workers()[0], signal.SIGKILL)
        at_worker_kill = _line_count(partial)
        _kill_when(driver, lambda: "handing it to another worker" in log.read_text()
                   and _line_count(partial) >= at_worker_kill + 4)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert "its worker died" in log.read_text()
    before = partial.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in before]
    assert len(ids) == len(set(ids)), "a sample written twice through the worker kill"
    proc = run_cli("resume", str(run), "scale.workers=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Ray: joined {cluster.address}; 1 worker(s)" in proc.stdout  # where it runs may change on resume
    assert f"resuming; {len(before) // 2} of 16 problems already sampled" in proc.stdout
    final = read_jsonl(run / "iter-001" / "samples.jsonl")
    assert len(final) == 32 and len({r["id"] for r in final}) == 32
    assert set(before) <= set((run / "iter-001" / "samples.jsonl").read_text().splitlines())  # kept, not redone
    assert json.loads((run / "iter-001" / "generate.json").read_text())["ran_on"] == "ray"
    assert _samples(run) == expected  # none lost, none doubled, the same as the local run's

    # the evaluation ran on the workers too: the same answers, so the same figures, every one of them (self-BLEU
    # draws its subset by position: the samples are put back in the problems' order whatever order they came in)
    def figures(name: str, i: int) -> dict:
        found = json.loads((tmp_path / name / f"iter-{i:03d}" / "eval.json").read_text())
        return {k: v for k, v in _flat(found).items() if not k.endswith(("seconds", "model", "ran_on"))}

    for i in (0, 1):
        local, ray_ = figures("local", i), figures("ray", i)
        assert local == ray_, {k: (v, ray_.get(k)) for k, v in local.items() if ray_.get(k) != v}
    assert "guards.mode_collapse.self_bleu" in figures("local", 1)


def _flat(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    if isinstance(d, list):
        return {k: v for n, val in enumerate(d) for k, v in _flat(val, f"{prefix}{n}.").items()}
    return {prefix[:-1]: d}


@needs_bwrap
def test_a_code_verify_stage_runs_in_the_workers_sandboxes(cluster, tiny_model, code_jsonl, tmp_path):
    args = code_overrides(tiny_model, code_jsonl, tmp_path, **{
        "scale.ray_address": cluster.address, "scale.workers": 2, "scale.env": ENV, "verify.options": "{workers: 1}"})
    proc = run_cli("run", *args, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Ray: joined {cluster.address}; 2 worker(s)" in proc.stdout
    verdicts = read_jsonl(tmp_path / "code" / "iter-001" / "verdicts.jsonl")
    assert len(verdicts) == 16
    assert [v["passed"] for v in verdicts] == [v["sample_id"].endswith("/s0") for v in verdicts]
    summary = json.loads((tmp_path / "code" / "iter-001" / "verify.json").read_text())
    assert summary["verifier"] == "code" and summary["passed"] == 8 and summary["ran_on"] == "ray"


GPUS = torch.cuda.device_count()
HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(not (GPUS and HAVE_VLLM), reason=f"needs a CUDA GPU and vllm (GPUs: {GPUS}, vllm: "
                    f"{'yes' if HAVE_VLLM else 'no'}): the GPU path of scale.num_gpus with generate.backend vllm")
def test_gpu_workers_sample_with_vllm_what_a_run_in_the_driver_samples(tiny_model, sums_jsonl, tmp_path):
    """One vLLM engine per GPU worker (scale.num_gpus: 1), freed before training so the driver's trainer gets the
    GPU back: the same samples, drawn from the same per-sample streams, as vLLM in the driver."""
    vllm = {"generate.backend": "vllm", "model.device": "cuda", "model.dtype": "float32",
            "generate.options": "{dtype: float32, enforce_eager: true, gpu_memory_utilization: 0.2, "
                                "kv_cache_memory_bytes: 536870912}"}
    local = run_cli("run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, name="local", **vllm), fresh=True)
    assert local.returncode == 0, local.stderr[-3000:]
    ray_ = run_cli("run", *tiny_overrides(tiny_model, sums_jsonl, tmp_path, name="ray", **vllm, **{
        "scale.ray_address": "local", "scale.workers": min(GPUS, 2), "scale.num_gpus": 1, "scale.env": ENV}),
        fresh=True)
    assert ray_.returncode == 0, ray_.stderr[-3000:]
    assert json.loads((tmp_path / "ray" / "iter-001" / "generate.json").read_text())["ran_on"] == "ray"
    assert _samples(tmp_path / "ray") == _samples(tmp_path / "local")
