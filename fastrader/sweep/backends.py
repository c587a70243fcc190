"""Where trials run: Ray (a local runtime started in-process, or a cluster) or a local process pool.

Both backends take the same calls from the runner:

* ``submit_group(key, sopts, phase, holdout)``: prepare a group's shared inputs once;
* ``submit_trial(tid, options, key)``: backtest one trial on its group's inputs;
* ``next_result()``: the next finished trial, ``(tid, record)``, in completion order.

and run the same functions of :mod:`.trial`, in worker processes that each use
``threads`` torch threads, so their metrics are identical row for row.

Ray's local runtime is kept on the loopback interface: the node address is
127.0.0.1 (Ray otherwise advertises, and binds its agents to, the machine's
outward IP), no dashboard, no usage-stats reporting. Joining a cluster
(``address``) uses the cluster as it is configured; a Ray cluster runs code
for anyone who can reach it, so it belongs on a trusted network only.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

from ..errors import ConfigError
from . import trial as T


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _failed(error: str) -> dict:
    return {"status": "failed", "error": error, "metrics": {}, "returns": None, "warnings": [],
            "seconds": float("nan"), "node": None, "pid": None}


def _init_worker(threads: int, warm: bool = False) -> None:
    # torch takes its thread count from OMP_NUM_THREADS when first imported; a worker that already
    # imported it (Ray reuses workers) is set directly. Plain strategies never import torch at all.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    if warm:  # import what every trial needs once, at start-up, not inside the first trial
        import backtrader  # noqa: F401
        import quantstats  # noqa: F401

        from .. import backtest, pipeline  # noqa: F401


def _prepare_task(sopts, phase, holdout, threads):
    _init_worker(threads)
    return T.prepare_shared(sopts, phase, holdout)


def _trial_task(options, shared, threads):
    _init_worker(threads)
    return T.run_trial(options, shared)


class LocalBackend:
    """A process pool (spawned workers: no state forked from the driver) sharing groups through Parquet files."""

    name = "local"

    def __init__(self, workers: int | None, shared_dir: Path, threads: int = 1):
        self.workers = workers or os.cpu_count() or 1
        self.shared_dir = Path(shared_dir)
        self.threads = threads
        self.pool = None
        self.groups = {}  # key -> future of the meta path
        self.ready = {}  # key -> meta path
        self.waiting = {}  # key -> [(tid, options)]
        self.trials = {}  # future -> tid

    def start(self, echo=print) -> None:
        # Workers inherit their thread counts from the environment at spawn, before numpy or torch
        # load: idle OpenBLAS threads would otherwise spin on the cores the other trials run on.
        # (Ray does the same for its workers.) Kept while the pool lives: it spawns workers on demand.
        self._saved_env = {k: os.environ.get(k) for k in THREAD_VARS}
        for k in THREAD_VARS:
            os.environ[k] = str(self.threads)
        self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                        initargs=(self.threads, True))
        self.where = f"local: process pool of {self.workers} workers on this machine"
        echo(self.where)

    @property
    def started(self) -> bool:
        return self.pool is not None

    @property
    def slots(self) -> int:
        return self.workers

    def submit_group(self, key, sopts, phase, holdout) -> None:
        if key in self.groups:
            return
        self.waiting.setdefault(key, [])
        self.groups[key] = self.pool.submit(T.prepare_to_file, sopts, phase, holdout, str(self.shared_dir))

    def submit_trial(self, tid, options, key) -> None:
        if key in self.ready:
            try:
                fut = self.pool.submit(T.run_trial_from_file, options, self.ready[key])
            except Exception as exc:  # a broken pool: the trial is recorded as failed, the sweep goes on
                fut = Future()
                fut.set_exception(exc)
            self.trials[fut] = tid
        else:
            self.waiting[key].append((tid, options))

    def pending(self) -> int:
        return len(self.trials) + sum(len(v) for v in self.waiting.values())

    def next_result(self):
        while True:
            open_groups = {f: k for k, f in self.groups.items() if k not in self.ready}
            futs = set(self.trials) | set(open_groups)
            if not futs:
                raise RuntimeError("next_result() with nothing in flight")
            done, _ = wait(futs, return_when=FIRST_COMPLETED)
            for f in done:
                if f in open_groups:
                    key = open_groups[f]
                    try:
                        self.ready[key] = f.result()
                    except Exception as exc:  # the pool itself broke
                        self.ready[key] = str(T.save_shared(T.Shared(key, error=T._describe(exc)), self.shared_dir))
                    for tid, options in self.waiting.pop(key, []):
                        self.submit_trial(tid, options, key)
            for f in done:
                if f in self.trials:
                    tid = self.trials.pop(f)
                    try:
                        return tid, f.result()
                    except Exception as exc:  # a worker died (killed, out of memory)
                        return tid, _failed(T._describe(exc))

    def reset(self) -> None:
        """Forget the prepared groups (a sweep is over; the workers stay up for the next)."""
        self.groups.clear()
        self.ready.clear()
        self.waiting.clear()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
            for k, v in self._saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray backend needs Ray: pip install 'fastrader[ray]' (or use --backend local)") from None
    from ..report.parallel import mark_fork_unsafe

    mark_fork_unsafe()  # every Ray runtime we start or join comes through here
    return ray


@contextlib.contextmanager
def loopback_env():
    """While Ray processes start inside it, they take 127.0.0.1 as their node address (see start_local_ray)."""
    saved = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED")}
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        ray = _import_ray()
        import ray._private.ray_constants as rc

        rc.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
        yield ray
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_local_ray(workers: int | None, gpus: float | None = None):
    """An in-process Ray runtime on 127.0.0.1 only: no dashboard, no usage stats, ports on loopback.

    Ray picks its node address from the machine's outward interface unless
    told it is not part of a cluster; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    (despite its name, a platform-independent switch) makes every Ray
    process use the loopback address, which the raylet, the GCS, the object
    manager, the workers and the runtime-env agent then bind to. The
    variable is set while the runtime's processes start, so they inherit it.
    """
    with loopback_env() as ray:
        ctx = ray.init(
            address="local",  # a new runtime: never join a cluster found through RAY_ADDRESS or `ray start`
            num_cpus=workers or os.cpu_count() or 1,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    return ctx


class RayBackend:
    """Trials as Ray tasks; a group's shared inputs are one object in Ray's object store."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, gpus_per_trial: float = 0.0,
                 cpus_per_trial: float = 1.0, threads: int = 1):
        self.workers = workers
        self.address = address
        self.gpus = float(gpus_per_trial or 0.0)
        self.cpus = float(cpus_per_trial)
        self.threads = threads
        self.owns_runtime = False
        self.started = False
        self.groups = {}
        self.trials = {}
        self.where = ""

    def start(self, echo=print) -> None:
        ray = _import_ray()
        if ray.is_initialized():
            self.where = f"ray: using the runtime this process already started ({self._size(ray)})"
        elif self.address:
            try:
                ctx = ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except Exception as exc:
                raise ConfigError(f"cannot join the Ray cluster at {self.address}: {type(exc).__name__}: {exc}") from None
            self.owns_runtime = True
            info = getattr(ctx, "address_info", None) or {}
            gcs = info.get("gcs_address") or getattr(ctx, "address", None) or self.address
            self.where = (f"ray: joined the cluster at {self.address} (GCS {gcs}; {self._size(ray)}); "
                          "a Ray cluster runs code for anyone who can reach it: keep it on a trusted network")
        else:
            ctx = start_local_ray(self.workers, self.gpus)
            self.owns_runtime = True
            self.where = (f"ray: local runtime in this process, GCS {ctx.address_info['gcs_address']} "
                          f"(loopback only, no dashboard; {self._size(ray)})")
        echo(self.where)
        self._ray = ray
        self.started = True
        opts = {"num_cpus": self.cpus}
        gopts = dict(opts, num_gpus=self.gpus) if self.gpus else opts
        self._prep = ray.remote(_prepare_task).options(**gopts)
        self._trial_cpu = ray.remote(_trial_task).options(**opts)
        self._trial_gpu = ray.remote(_trial_task).options(**gopts)

    @staticmethod
    def _size(ray) -> str:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = ray.cluster_resources()
        gpus = res.get("GPU", 0)
        return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, {res.get('CPU', 0):g} CPUs" + (f", {gpus:g} GPUs" if gpus else "")

    @property
    def slots(self) -> int:
        if self.workers:
            return self.workers
        return max(1, int(self._ray.cluster_resources().get("CPU", 1) // max(self.cpus, 1e-9)))

    def submit_group(self, key, sopts, phase, holdout) -> None:
        if key not in self.groups:
            self.groups[key] = (self._prep.remote(sopts, phase, holdout, self.threads), bool(sopts.get("stream")))

    def submit_trial(self, tid, options, key) -> None:
        ref, streams = self.groups[key]
        # A trial asks for a GPU share only when it runs the model itself (streamed signals);
        # precomputed signals were made by the group's prepare task.
        uses_model = streams or bool((options.get("params") or {}).get("stream"))
        fn = self._trial_gpu if uses_model else self._trial_cpu
        self.trials[fn.remote(options, ref, self.threads)] = tid

    def pending(self) -> int:
        return len(self.trials)

    def next_result(self):
        ray = self._ray
        done, _ = ray.wait(list(self.trials), num_returns=1)
        ref = done[0]
        tid = self.trials.pop(ref)
        try:
            return tid, ray.get(ref)
        except Exception as exc:  # the worker or its node died
            return tid, _failed(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    def reset(self) -> None:
        self.groups.clear()  # drops the refs: the object store may free the groups' inputs

    def close(self) -> None:
        if self.owns_runtime:
            self._ray.shutdown()
            self.owns_runtime = False
        self.started = False


def make_backend(spec, shared_dir: Path):
    threads = max(1, int(spec.cpus_per_trial))
    if spec.backend == "local":
        if spec.gpus_per_trial:
            print("note: --gpus-per-trial is a Ray resource request; the local pool ignores it", file=sys.stderr)
        return LocalBackend(spec.workers, shared_dir, threads)
    return RayBackend(spec.workers, spec.address, spec.gpus_per_trial, spec.cpus_per_trial, threads)
