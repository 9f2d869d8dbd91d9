"""The Ray executor: jobs run on actors of a Ray cluster (``executor: {kind: ray}``).

Each routine gets ``executor.actors_per_routine`` actors (default: one per unit of
``executor.gpu_resource`` in the cluster), each a :class:`~node.orchestration.ray_actor.RoutineHost`
holding the routine loaded and warm. A GPU routine's actor asks for a share of a GPU
(its declared ``gpu_memory_mb`` over ``executor.gpu_memory_mb``, a whole one when either
is unknown) as ``num_gpus`` or as the custom resource named by ``gpu_resource``; a
CPU-only routine's actor (and every actor when the cluster has no such resource) asks
for ``cpus_per_actor`` CPUs. Actors are named in ``executor.namespace``, owned by the
node (they end with it) and restarted by Ray when they or their node die.

:meth:`RayExecutor.submit` reads the job's files and ``ray.put``s them (the
``object_store`` transfer; ``spool: shared`` sends the paths), queues the job and sends
the most urgent queued jobs (priority, then job id) to the routine's least busy ready
actor, at most ``max_in_flight_per_actor`` to one actor. When an answer comes back the
node writes the result files under the job's own result directory, the manifest last;
the future then gives the :class:`~node.orchestration.job.JobOutput`. An actor or node
that dies, or a job not back within its time limit plus ``lost_after_seconds``, fails
the future with :class:`~node.orchestration.executor.JobLost`: the worker puts the job
back in the queue, and the actor takes jobs again once Ray has restarted it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, cast

import ray
import ray.exceptions

from node.config import ExecutorSettings
from node.contract.plugin import InferencePlugin, Resources
from node.orchestration.executor import JobLost
from node.orchestration.job import JobInput, JobOutput
from node.orchestration.ray_actor import HostInfo, Returned, RoutineHost, Shipment, read_blobs
from node.results.manifest import MANIFEST, clear_results
from node.spool import sync_directory, write_durably
from node.state.events import EventCode
from node.state.lease import owner_name

log = logging.getLogger(__name__)

#: Numbers the executors of this process (their actors' names differ).
_EXECUTORS = itertools.count(1)

#: ``on_event(job_id, code, detail)``: an event for the job's timeline.
OnEvent = Callable[[int, EventCode, str], None]


def connect(settings: ExecutorSettings) -> None:
    """Join the Ray cluster of ``settings`` (a no-op when this process already has)."""
    if ray.is_initialized():
        return
    ray.init(
        address=settings.address,
        namespace=settings.namespace,
        log_to_driver=False,
        configure_logging=False,
    )


def actor_options(
    settings: ExecutorSettings, resources: Resources, cluster: Mapping[str, float]
) -> dict[str, Any]:
    """The Ray resources of one actor of a routine that declares ``resources``."""
    uses_gpu = resources.needs_gpu or resources.gpu_memory_mb > 0
    if not uses_gpu or cluster.get(settings.gpu_resource, 0) <= 0:
        return {"num_cpus": settings.cpus_per_actor}
    share = 1.0
    if settings.gpu_memory_mb and resources.gpu_memory_mb:
        share = min(1.0, resources.gpu_memory_mb / settings.gpu_memory_mb)
    if settings.gpu_resource == "GPU":
        return {"num_cpus": 0, "num_gpus": share}
    return {"num_cpus": 0, "resources": {settings.gpu_resource: share}}


@dataclass
class _Actor:
    name: str
    handle: Any
    in_flight: int = 0
    #: Set once the actor answered ``info`` (after its start or restart).
    info: HostInfo | None = None
    generation: int = 0
    #: Unanswered readiness checks since the last answer (only the first is logged).
    waits: int = 0


@dataclass(order=True)
class _Queued:
    priority: int
    job_id: int
    sequence: int
    job: JobInput = field(compare=False)
    shipment: Any = field(compare=False)
    future: Future[JobOutput] = field(compare=False)
    submitted: float = field(compare=False, default=0.0)


@dataclass
class _Sent:
    queued: _Queued
    actor: _Actor
    ref: Any
    deadline: float | None
    sent_at: float


def _write_bytes(data: bytes, handle: BinaryIO) -> None:
    handle.write(data)


def _settle(future: Future[JobOutput], output: JobOutput | BaseException) -> None:
    """Give ``future`` its output or exception, unless the worker cancelled it (stopping)."""
    if future.done():
        return
    try:
        if isinstance(output, BaseException):
            future.set_exception(output)
        else:
            future.set_result(output)
    except InvalidStateError:  # cancelled meanwhile
        return


class RayExecutor:
    """Runs jobs on Ray actors (see the module doc); the ``Executor`` of ``kind: ray``.

    Parameters
    ----------
    resources
        A routine's declared resources by name (from the node's registry).
    job_timeout_seconds
        The jobs' own time limit; a job not back within it plus
        ``settings.lost_after_seconds`` is taken as lost.
    extra_plugins
        Plugin classes the actors register beside the installed ones (tests).
    """

    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        models: Mapping[str, Any],
        templates_dir: Path | None,
        resources: Callable[[str], Resources],
        gpu_memory_budget_mb: int | None = None,
        job_timeout_seconds: float | None = None,
        on_event: OnEvent = lambda job_id, code, detail: None,
        extra_plugins: Sequence[type[InferencePlugin]] = (),
    ) -> None:
        connect(settings)
        self.settings = settings
        self._models = dict(models)
        self._templates: tuple[tuple[str, bytes], ...] = ()
        if templates_dir is not None:  # the site's templates travel to the actors
            self._templates = tuple(
                (p.name, p.read_bytes()) for p in sorted(templates_dir.glob("*.yaml"))
            )
        self._resources = resources
        self._budget = gpu_memory_budget_mb
        self._timeout = job_timeout_seconds
        self._on_event = on_event
        self._extra_plugins = tuple(extra_plugins)
        self._lock = threading.RLock()
        self._pools: dict[str, list[_Actor]] = {}
        self._queued: list[_Queued] = []
        self._sent: dict[int, _Sent] = {}
        self._sequence = itertools.count()
        self._count: tuple[int, float] | None = None
        self._prefix = f"{owner_name('ray').replace(':', '-')}-{next(_EXECUTORS)}"
        self._writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ray-results")
        #: Ray's completion callbacks hand over to this thread (no Ray calls in Ray's own).
        self._events = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-answers")
        self._closed = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="ray-watchdog", daemon=True)
        self._watchdog.start()

    # -- capacity -------------------------------------------------------------------

    def actor_count(self) -> int:
        """Actors per routine: the setting, or the units of ``gpu_resource`` in the
        cluster (at least 1; looked up at most every 10 s)."""
        if self.settings.actors_per_routine:
            return self.settings.actors_per_routine
        now = time.monotonic()
        if self._count is None or now - self._count[1] > 10.0:
            units = int(ray.cluster_resources().get(self.settings.gpu_resource, 0))
            self._count = (max(1, units), now)
        return self._count[0]

    @property
    def capacity(self) -> int:
        """Jobs one routine can have away at once: its actors times the in-flight bound."""
        return self.actor_count() * self.settings.max_in_flight_per_actor

    def in_flight(self) -> dict[str, int]:
        """Jobs sent and not back, by actor name."""
        with self._lock:
            return {a.name: a.in_flight for pool in self._pools.values() for a in pool}

    def pending(self) -> int:
        """Jobs held here, not yet sent to an actor."""
        with self._lock:
            return len(self._queued)

    def has_room(self) -> bool:
        """No job waits here for an actor and fewer than :attr:`capacity` per routine
        are away: one more submitted job would be sent now (or once its actors start)."""
        with self._lock:
            pools = max(1, len(self._pools))
            return not self._queued and len(self._sent) < self.capacity * pools

    # -- submission -----------------------------------------------------------------

    def submit(self, job: JobInput) -> Future[JobOutput]:
        future: Future[JobOutput] = Future()
        shipment = None
        if self.settings.spool == "object_store":
            shipment = ray.put(self._shipment(job))
        queued = _Queued(
            job.priority, job.job_id, next(self._sequence), job, shipment, future, time.time()
        )
        with self._lock:
            heapq.heappush(self._queued, queued)
            self._dispatch()
        return future

    @staticmethod
    def _shipment(job: JobInput) -> Shipment:
        prior = read_blobs(job.prior.paths) if job.prior is not None else ()
        previous: tuple[tuple[str, bytes], ...] = ()
        if job.previous_result_dir is not None and job.previous_result_dir.is_dir():
            previous = tuple(
                (p.name, p.read_bytes()) for p in sorted(job.previous_result_dir.glob("*.dcm"))
            )
        return Shipment(read_blobs(job.instance_paths), prior, previous)

    def _pool(self, plugin: str) -> list[_Actor]:
        pool = self._pools.get(plugin)
        if pool is not None:
            return pool
        options = actor_options(self.settings, self._resources(plugin), ray.cluster_resources())
        remote = ray.remote(RoutineHost)
        pool = []
        for index in range(self.actor_count()):
            name = f"{plugin}-{index}-{self._prefix}"
            handle = remote.options(
                name=name,
                namespace=self.settings.namespace,
                max_restarts=-1,
                max_task_retries=0,
                **options,
            ).remote(plugin, self._models, self._templates, self._budget, self._extra_plugins)
            actor = _Actor(name, handle)
            pool.append(actor)
            self._ask_ready(actor)
        log.info("ray actors created plugin=%s actors=%d options=%s", plugin, len(pool), options)
        self._pools[plugin] = pool
        return pool

    def _ask_ready(self, actor: _Actor) -> None:
        """Mark ``actor`` ready once it answers (after its start or a restart)."""
        generation = actor.generation

        def answered(future: Future[HostInfo]) -> None:
            try:
                info = future.result()
            except Exception as exc:  # restarting, or waiting for room on a Ray node
                if actor.waits == 0:
                    log.warning("ray actor not ready actor=%s error=%s", actor.name, exc)
                actor.waits += 1
                if not self._closed.is_set():
                    timer = threading.Timer(2.0, self._retry_ready, (actor, generation))
                    timer.daemon = True
                    timer.start()
                return
            actor.waits = 0
            with self._lock:
                if actor.generation != generation:
                    return
                actor.info = info
                self._dispatch()
            log.info(
                "ray actor ready actor=%s node=%s pid=%d device=%s",
                actor.name,
                info.node_id[:12],
                info.pid,
                info.device,
            )

        actor.handle.info.remote().future().add_done_callback(
            lambda future: self._hand_over(answered, future)
        )

    def _hand_over(self, handler: Callable[..., None], *args: Any) -> None:
        """Run ``handler`` on the executor's own thread (Ray's callbacks call this)."""
        if self._closed.is_set():
            return
        try:
            self._events.submit(handler, *args)
        except RuntimeError:  # shut down meanwhile
            return

    def _retry_ready(self, actor: _Actor, generation: int) -> None:
        with self._lock:
            if actor.generation == generation and not self._closed.is_set():
                self._ask_ready(actor)

    def _dispatch(self) -> None:
        """Send the queued jobs, most urgent first, to actors with room (under the lock)."""
        held: list[_Queued] = []
        limit = self.settings.max_in_flight_per_actor
        while self._queued and not self._closed.is_set():
            queued = heapq.heappop(self._queued)
            if queued.future.cancelled():
                continue
            try:
                pool = self._pool(queued.job.plugin)
            except Exception as exc:  # unknown routine, or Ray refused the actors
                _settle(queued.future, exc)
                continue
            ready = [a for a in pool if a.info is not None and a.in_flight < limit]
            if not ready:
                held.append(queued)
                continue
            self._send(queued, min(ready, key=lambda a: a.in_flight))
        for queued in held:
            heapq.heappush(self._queued, queued)

    def _send(self, queued: _Queued, actor: _Actor) -> None:
        assert actor.info is not None
        job = queued.job
        actor.in_flight += 1
        ref = actor.handle.run.remote(job, queued.shipment)
        deadline = None
        if self._timeout is not None:
            deadline = time.monotonic() + self._timeout + self.settings.lost_after_seconds
        sent = _Sent(queued, actor, ref, deadline, time.time())
        self._sent[job.job_id] = sent
        self._on_event(
            job.job_id,
            EventCode.JOB_SUBMITTED,
            f"executor=ray actor={actor.name} node={actor.info.node_id[:12]}"
            f" host={actor.info.host} pid={actor.info.pid} device={actor.info.device}"
            f" in_flight={actor.in_flight} transfer={self.settings.spool}",
        )
        ref.future().add_done_callback(lambda answer: self._hand_over(self._answered, sent, answer))

    # -- answers ----------------------------------------------------------------------

    def _take(self, sent: _Sent) -> bool:
        """Remove ``sent`` from the jobs away; False when it was already (timed out)."""
        with self._lock:
            if self._sent.get(sent.queued.job.job_id) is not sent:
                return False
            del self._sent[sent.queued.job.job_id]
            sent.actor.in_flight -= 1
            return True

    def _answered(self, sent: _Sent, answer: Future[Returned]) -> None:
        if not self._take(sent):
            return
        future = sent.queued.future
        try:
            returned = answer.result()
        except ray.exceptions.RayTaskError as exc:  # ``run`` raised: the job fails with it
            _settle(future, RuntimeError(f"ray actor {sent.actor.name}: {exc}"))
        except Exception as exc:  # the actor, its worker or its node is gone
            self._lost(sent, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        else:
            self._writer.submit(self._finish, sent, returned, time.time())
        with self._lock:
            self._dispatch()

    def _lost(self, sent: _Sent, reason: str) -> None:
        actor = sent.actor
        log.warning(
            "ray job lost job_id=%d actor=%s reason=%s", sent.queued.job_id, actor.name, reason
        )
        with self._lock:
            if actor.info is not None:  # wait for Ray's restart before sending it more
                actor.info = None
                actor.generation += 1
                self._ask_ready(actor)
        _settle(sent.queued.future, JobLost(f"ray actor {actor.name} lost: {reason}"))

    def _finish(self, sent: _Sent, returned: Returned, received: float) -> None:
        future = sent.queued.future
        try:
            output = self._write(sent.queued.job, returned)
        except Exception as exc:
            _settle(future, exc)
            return
        host = returned.host
        self._on_event(
            sent.queued.job_id,
            EventCode.INFERENCE_REMOTE,
            f"actor={sent.actor.name} node={host.node_id[:12]} host={host.host} pid={host.pid}"
            f" inputs={returned.inputs_dir} to_start={returned.started_at - sent.sent_at:.3f}"
            f" back={received - returned.ended_at:.3f} write={time.time() - received:.3f}"
            f" files={len(returned.files)}",
        )
        _settle(future, output)

    @staticmethod
    def _write(job: JobInput, returned: Returned) -> JobOutput:
        """Write the returned result files under the job's result directory, the manifest
        last (the exporter sends only what it lists)."""
        output = returned.output
        if not returned.files:
            return output
        result_dir = job.result_dir
        assert result_dir is not None, "results came back for a job that writes none"
        result_dir.mkdir(parents=True, exist_ok=True)
        stale = clear_results(result_dir)
        if stale:
            log.warning("stale result files removed job_id=%d count=%d", job.job_id, len(stale))
        manifest = [blob for blob in returned.files if blob[0] == MANIFEST]
        for name, data in returned.files:  # the directory is synced once, before the manifest
            if name != MANIFEST:
                path = result_dir / Path(name).name
                write_durably(path, partial(_write_bytes, data), sync_parent=False)
        sync_directory(result_dir)
        for name, data in manifest:
            write_durably(result_dir / name, partial(_write_bytes, data))
        files = tuple(replace(f, path=result_dir / f.path.name) for f in output.files)
        return replace(output, result_dir=result_dir, files=files)

    def _watch(self) -> None:
        """Take back jobs away past their deadline; their actor is restarted."""
        while not self._closed.wait(1.0):
            now = time.monotonic()
            with self._lock:
                late = [
                    s for s in self._sent.values() if s.deadline is not None and now > s.deadline
                ]
            for sent in late:
                if not self._take(sent):
                    continue
                ray.kill(sent.actor.handle, no_restart=False)
                self._lost(sent, "no answer within the job's time limit")
                with self._lock:
                    self._dispatch()

    # -- inspection and end ---------------------------------------------------------------

    def actors(self) -> list[dict[str, Any]]:
        """Each actor: routine, name, node, host, pid, device, GPUs, jobs away, state, and
        the objects its start-up froze for the garbage collector (:mod:`node.heap`)."""
        with self._lock:
            pools = {plugin: list(pool) for plugin, pool in self._pools.items()}
        rows = []
        for plugin, pool in sorted(pools.items()):
            for actor in pool:
                info = actor.info
                rows.append(
                    {
                        "plugin": plugin,
                        "name": actor.name,
                        "state": "ready" if info is not None else "starting",
                        "node_id": info.node_id if info else None,
                        "host": info.host if info else None,
                        "pid": info.pid if info else None,
                        "device": info.device if info else None,
                        "gpu_ids": list(info.gpu_ids) if info else [],
                        "in_flight": actor.in_flight,
                        "load_error": info.load_error if info else None,
                        "heap_frozen": info.heap_frozen if info else None,
                    }
                )
        return rows

    def shutdown(self) -> None:
        self._closed.set()
        with self._lock:
            queued, self._queued = self._queued, []
            sent = list(self._sent.values())
            self._sent.clear()
            pools = [a for pool in self._pools.values() for a in pool]
            self._pools.clear()
        for item in [*queued, *(s.queued for s in sent)]:
            _settle(item.future, JobLost("the executor stopped"))
        for actor in pools:
            try:
                ray.kill(actor.handle, no_restart=True)
            except Exception:  # already gone
                continue
        self._events.shutdown(wait=False, cancel_futures=True)
        self._writer.shutdown(wait=True)


def cluster_actors(settings: ExecutorSettings, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The routine actors in ``settings.namespace`` of the cluster, as any process sees
    them (``ainode plugins list``): name, routine, node, host, pid, device, GPUs."""
    connect(settings)
    rows = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != settings.namespace:
            continue
        name = entry["name"]
        row: dict[str, Any] = {"name": name, "plugin": None, "state": "not answering"}
        try:
            handle = ray.get_actor(name, namespace=settings.namespace)
            info = cast(HostInfo, ray.get(handle.info.remote(), timeout=timeout))
        except Exception as exc:  # dead, restarting, or not one of ours
            row["error"] = f"{type(exc).__name__}"
        else:
            row.update(
                plugin=info.plugin,
                state="ready",
                node_id=info.node_id,
                host=info.host,
                pid=info.pid,
                device=info.device,
                gpu_ids=list(info.gpu_ids),
                load_error=info.load_error,
            )
        rows.append(row)
    return sorted(rows, key=lambda r: r["name"])
