"""The driver's side of a Ray cluster: connect (or start one), keep `scale.workers` stage workers, and hand out
work to them with the faults handled.

A handout is a few whole problems (or a few problems' samples to judge). The driver keeps at most one handout in
flight per worker and yields each result as it arrives, so the stage appends it to its partial file at once:

- a worker that dies (SIGKILL, out of memory) has its handout given to another worker, and is replaced;
- a worker that holds a handout past `scale.task_timeout` is killed, replaced, and its handout given again;
- a handout that failed `scale.max_retries` + 1 times stops the run with one line naming its first problem;
- a worker that cannot read the model (worker.WorkerSetupError) stops the run with its own line: every worker
  would;
- a result is yielded once per handout, and one from a worker already given up on is never read, so nothing
  is written twice.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfplay.config.scale import ScaleConfig
from selfplay.errors import UserError
from selfplay.scale.worker import StageWorker

# What the workers inherit from the driver: the run's offline settings and where the embedded model is cached.
PASSED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_VERBOSITY",
              "TOKENIZERS_PARALLELISM", "HF_DATASETS_DISABLE_PROGRESS_BARS", "SELFPLAY_CACHE", "HF_HOME")
POLL_SECONDS = 0.5  # how often the driver looks at the clock while it waits for results


@dataclass
class Handout:
    """One unit of work: a method of the stage worker and its arguments, and the problems it covers."""

    label: str  # the first problem's id, for messages
    method: str
    args: tuple[Any, ...]
    keys: Sequence[str] = ()
    data: Any = None  # the caller's own bookkeeping (where each result goes)
    tries: int = 0
    errors: list[str] = field(default_factory=list)


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("scale.ray_address: Ray is not installed; install it with: "
                        "pip install 'selfplay[ray]'") from None
    return ray


def _refused_token(error: BaseException) -> bool:
    """Whether joining failed on Ray's token authentication: Ray says so only in the error's causes."""
    seen: BaseException | None = error
    while seen is not None:
        if "InvalidAuthToken" in str(seen) or type(seen).__name__ == "AuthenticationError":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RayWorkers:
    """`scale.workers` stage workers on a Ray cluster, started on first use and stopped by `shutdown`."""

    def __init__(self, scale: ScaleConfig, device: str, dtype: str, backend: str, options: dict[str, Any]):
        self.scale, self.device, self.dtype, self.backend, self.options = scale, device, dtype, backend, options
        self.actors: list[Any] = []  # None: a slot whose worker was given up on, started again on the next run
        self.fresh: list[bool] = []  # a worker that has not answered yet is still starting: it gets startup_timeout
        self.started_cluster = False
        self.connected = False  # this object called ray.init (and so calls ray.shutdown)
        self.replaced = 0  # workers started again after a death or a hang

    # -- the cluster ----------------------------------------------------------------------------------------
    def _connect(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            return  # the caller's own connection (a notebook, a test): used as it is, and left open
        s = self.scale
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ} | dict(s.env)
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": True}
        if s.ray_address == "local":
            # A cluster the run starts sends nothing home unless the user asked Ray to (RAY_USAGE_STATS_ENABLED=1).
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            # "local" always starts a new cluster, even where RAY_ADDRESS or a running cluster would be joined
            kwargs.update(address="local", num_cpus=max(1, int(s.workers * s.num_cpus + 0.999)),
                          include_dashboard=False)
            if s.num_gpus:
                kwargs["num_gpus"] = int(s.workers * s.num_gpus + 0.999)
        else:
            kwargs["address"] = s.ray_address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if _refused_token(e):
                raise UserError(
                    f"scale.ray_address: the Ray cluster at {s.ray_address!r} refused this machine's token ({first}): "
                    "it uses Ray's token authentication (the default on a `ray start --head` since Ray 2.59); set "
                    "RAY_AUTH_MODE=token here, with the head's token in ~/.ray/auth_token or RAY_AUTH_TOKEN (`ray "
                    "get-auth-token` on the head prints it)") from None
            raise UserError(f"scale.ray_address: cannot join the Ray cluster at {s.ray_address!r} ({first}); "
                            "start one with `ray start --head`, or use 'local'") from None
        self.started_cluster, self.connected = s.ray_address == "local", True
        print(f"Ray: {'started a local cluster' if self.started_cluster else 'joined ' + s.ray_address}; "
              f"{s.workers} worker(s) of {s.num_cpus:g} CPU, {s.num_gpus:g} GPU", flush=True)

    def _start(self) -> Any:
        ray = _ray()
        s = self.scale
        remote = ray.remote(StageWorker).options(num_cpus=s.num_cpus, num_gpus=s.num_gpus, max_restarts=0,
                                                 max_task_retries=0)
        return remote.remote(self.device, self.dtype, self.backend, self.options, max(1, int(s.num_cpus)))

    def _ensure(self) -> None:
        if len(self.actors) < self.scale.workers or None in self.actors:
            self._connect()
            self.actors += [None] * (self.scale.workers - len(self.actors))
            self.fresh += [True] * (len(self.actors) - len(self.fresh))
            for slot, actor in enumerate(self.actors):
                if actor is None:
                    self.actors[slot], self.fresh[slot] = self._start(), True

    def release(self) -> None:
        """Ask every worker to free its models (the driver is about to train); a dead worker is skipped."""
        refs = [a.release.remote() for a in self.actors if a is not None]
        if not refs:
            return
        ray = _ray()
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=60)
        for ref in ready:
            try:
                ray.get(ref)
            except Exception:  # noqa: BLE001 - a dead worker holds nothing; the next handout replaces it
                pass

    def shutdown(self) -> None:
        """Stop the workers at once (nothing they hold is kept), and disconnect when this object connected (which
        also stops a cluster the run started)."""
        if not self.actors and not self.connected:
            return
        ray = _ray()
        for a in self.actors:
            if a is not None:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.actors, self.fresh = [], []
        if self.connected:
            ray.shutdown()
        self.started_cluster = self.connected = False

    # -- handing out work -----------------------------------------------------------------------------------
    def run(self, handouts: Sequence[Handout]) -> Iterator[tuple[Handout, Any]]:
        """Yield (handout, result) as each finishes, whichever worker did it, with faults handled as above."""
        if not handouts:
            return
        self._ensure()
        ray = _ray()
        from ray.exceptions import RayActorError, RayTaskError

        queue = deque(handouts)
        idle = list(range(len(self.actors)))
        running: dict[Any, tuple[int, Handout, float]] = {}  # ref -> (worker slot, handout, its deadline)
        s = self.scale
        try:
            while queue or running:
                while queue and idle:
                    slot, h = idle.pop(), queue.popleft()
                    ref = getattr(self.actors[slot], h.method).remote(*h.args)
                    allowed = s.task_timeout + (s.startup_timeout if self.fresh[slot] else 0.0)
                    running[ref] = (slot, h, time.monotonic() + allowed)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    slot, h, _ = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as e:
                        # the worker's own one-line errors (an unreadable model: WorkerSetupError) as they are;
                        # anything else raised there (a plugin's bug) names the problem
                        cause = getattr(e, "cause", None)
                        if isinstance(cause, UserError):
                            raise UserError(str(cause)) from None
                        raise UserError(f"Ray worker: problem {h.label}: {type(cause or e).__name__}: "
                                        f"{_first_line(cause or e)}") from None
                    except RayActorError as e:
                        self._give_again(h, slot, queue, f"its worker died ({_first_line(e)})")
                    else:
                        self.fresh[slot] = False
                        yield h, result
                    idle.append(slot)
                now = time.monotonic()
                for ref, (slot, h, deadline) in list(running.items()):
                    if now > deadline:
                        running.pop(ref)
                        ray.kill(self.actors[slot])  # its late answer, if any, is never read
                        self._give_again(h, slot, queue, f"no answer within scale.task_timeout "
                                                         f"({s.task_timeout:g}s)")
                        idle.append(slot)
        finally:
            # Stopped early (an error, an interrupt, a caller that stopped reading): a running actor task cannot be
            # cancelled, so its worker is killed, and started again when the next handouts come.
            for slot, _, _ in running.values():
                try:
                    ray.kill(self.actors[slot])
                except Exception:  # noqa: BLE001 - already gone
                    pass
                self.actors[slot] = None

    def _give_again(self, h: Handout, slot: int, queue: deque, why: str) -> None:
        """Queue the handout of the worker in `slot` again (and replace that worker), unless it failed too often."""
        h.tries += 1
        h.errors.append(why)
        self.actors[slot] = None  # dead or killed: started again below, or by the next run
        if h.tries > self.scale.max_retries:
            more = f" (and {len(h.keys) - 1} more problems in its handout)" if len(h.keys) > 1 else ""
            raise UserError(f"Ray: problem {h.label}{more} failed {h.tries} times: {'; '.join(h.errors)} "
                            f"(scale.max_retries is {self.scale.max_retries}); finished problems are kept, "
                            "continue with selfplay resume")
        self.actors[slot], self.fresh[slot] = self._start(), True
        self.replaced += 1
        print(f"Ray: problem {h.label}: {why}; handing it to another worker (try {h.tries + 1})", flush=True)
        queue.appendleft(h)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(e).__name__
