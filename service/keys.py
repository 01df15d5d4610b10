"""Every Redis key and channel name actionq uses, built in this one module.

Everything lives under a namespace (default ``actionq``) so that several deployments can share
one Redis without seeing each other's jobs. arq's own key prefixes are global
(``arq:in-progress:``, ``arq:result:``; actionq writes no ``arq:job:`` body or ``arq:retry:``
counter), so isolation takes two measures:

* arq job ids are ``<namespace>:<job_id>``, so arq's keys become ``arq:result:<namespace>:<job_id>``;
* queue names start with ``<namespace>:queue:``.

Queues are chosen from the request so that a worker never takes a job for a plugin it does not
have: ``<ns>:queue:<lane>:<plugin>`` for any worker serving the plugin, and
``<ns>:queue:<lane>:<plugin>@<host>`` for a job targeted at one host.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.arqformat import IN_PROGRESS_PREFIX, RESULT_PREFIX

__all__ = ["DEFAULT_NAMESPACE", "Keys"]

DEFAULT_NAMESPACE = "actionq"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key and channel names for one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    # -- jobs -------------------------------------------------------------------------------
    def job(self, job_id: str) -> str:
        """Hash: the service's ``JobRecord`` of a live job (an ended job's is in its arq result)."""
        return f"{self.namespace}:job:{job_id}"

    def job_channel(self, job_id: str) -> str:
        """Pub/sub channel: state changes and progress of one job."""
        return self.job_channel_prefix() + job_id

    def job_channel_prefix(self) -> str:
        """What :meth:`job_channel` puts before the job id (the submit script names the channels of its jobs)."""
        return f"{self.namespace}:ch:job:"

    def job_stream(self, job_id: str) -> str:
        """Stream: the items a generator action yielded, ended by a terminal marker entry."""
        return f"{self.namespace}:stream:{job_id}"

    def checkpoint(self, job_id: str) -> str:
        """String: the JSON state a job saved with ``ctx.checkpoint.save``; gone when the job ends."""
        return f"{self.namespace}:checkpoint:{job_id}"

    def cancel_channel(self) -> str:
        """Pub/sub channel to every worker: ``{"job_id", "reason", "generation", "ts", "sig"}`` of a job to cancel."""
        return f"{self.namespace}:ch:cancel"

    # -- dead letters -----------------------------------------------------------------------
    def dead_letters(self) -> str:
        """ZSET: job id -> when it was dead-lettered (epoch ms)."""
        return f"{self.namespace}:dead"

    def dead_letter(self, job_id: str) -> str:
        """String: a dead letter's JSON (request, attempt history, final error)."""
        return f"{self.namespace}:dead:{job_id}"

    def arq_job_id(self, job_id: str) -> str:
        """The id arq knows the job by: namespaced, because arq's key prefixes are global."""
        return f"{self.namespace}:{job_id}"

    def job_id_from_arq(self, arq_job_id: str) -> str:
        """Inverse of :meth:`arq_job_id`."""
        prefix = f"{self.namespace}:"
        if not arq_job_id.startswith(prefix):
            raise ValueError(f"arq job id {arq_job_id!r} is not in namespace {self.namespace!r}")
        return arq_job_id[len(prefix) :]

    def arq_result(self, job_id: str) -> str:
        """arq's result key (holding the final record once the job ended; :mod:`service.arqformat`)."""
        return RESULT_PREFIX + self.arq_job_id(job_id)

    def arq_in_progress(self, job_id: str) -> str:
        """arq's in-progress key: the job's lease (its value is the worker id)."""
        return IN_PROGRESS_PREFIX + self.arq_job_id(job_id)

    # -- queues -----------------------------------------------------------------------------
    def queue(self, plugin: str, lane: str = "default", host: str | None = None) -> str:
        """The arq queue (ZSET) for jobs of ``plugin`` in ``lane``, optionally for one host."""
        base = f"{self.namespace}:queue:{lane}:{plugin}"
        return base if host is None else f"{base}@{host}"

    def control_channel(self) -> str:
        """Pub/sub channel: control commands to workers (``ControlCommand`` JSON)."""
        return f"{self.namespace}:ch:control"

    def control_acks_channel(self) -> str:
        """Pub/sub channel: workers' acknowledgements of control commands (``ControlAck`` JSON)."""
        return f"{self.namespace}:ch:control-acks"

    def control_acks(self, command_id: str) -> str:
        """List: the acknowledgements of one command, kept a few minutes."""
        return f"{self.namespace}:control:{command_id}"

    def wake_channel(self) -> str:
        """Pub/sub channel: a submit announces its queue's name here, so idle workers wake at once."""
        return f"{self.namespace}:ch:wake"

    def idle_workers(self, queue: str) -> str:
        """ZSET: id of each worker waiting for ``queue``'s jobs -> until when (epoch ms) it says so.

        A submit that finds one hands the job straight to it (``service/redis/lua/submit.lua``).
        """
        return f"{self.namespace}:idle:" + queue.removeprefix(self.queue_prefix())

    def worker_channel(self, worker_id: str) -> str:
        """Pub/sub channel: jobs handed straight to one worker by a submit (it is idle)."""
        return self.worker_channel_prefix() + worker_id

    def worker_channel_prefix(self) -> str:
        """What :meth:`worker_channel` puts before the worker id (the submit script names a listed worker's channel)."""
        return f"{self.namespace}:ch:worker:"

    def queue_prefix(self) -> str:
        """Prefix shared by every queue of the namespace (for listing them)."""
        return f"{self.namespace}:queue:"

    def queue_plugin(self, queue: str) -> str:
        """The plugin whose jobs :meth:`queue` ``queue`` holds (inverse of its naming; names have no ``:``)."""
        return queue.removeprefix(self.queue_prefix()).partition(":")[2].partition("@")[0]

    # -- concurrency limits -----------------------------------------------------------------
    def limit_slots(self, plugin: str, action: str | None = None) -> str:
        """ZSET: the running attempts (``<job id>#<attempt>``) holding a slot of one concurrency limit
        -> until when (Redis's clock, epoch ms) unless renewed: a plugin's, or one action's.

        :mod:`service.worker.limits`; names cannot contain ``:``, so the two kinds never collide.
        """
        base = f"{self.namespace}:limit:{plugin}"
        return base if action is None else f"{base}:{action}"

    def limit_waiting(self, plugin: str, action: str | None = None) -> str:
        """ZSET: the jobs a limit refused (``<queue>\\n<arq job id>``) -> when submitted (epoch ms):
        promoted, oldest first, when its slots come free (:mod:`service.worker.limits`)."""
        base = f"{self.namespace}:limit-waiting:{plugin}"
        return base if action is None else f"{base}:{action}"

    # -- registry and workers ---------------------------------------------------------------
    def registry_manifests(self) -> str:
        """Hash: plugin name -> manifest JSON, as published by the workers serving it."""
        return f"{self.namespace}:registry:manifests"

    def registry_heartbeats(self) -> str:
        """ZSET: plugin name -> last heartbeat (epoch ms) of any worker serving it."""
        return f"{self.namespace}:registry:heartbeats"

    def registry_queues(self) -> str:
        """ZSET: queue -> last heartbeat (epoch ms) of any worker reading it (the sweep of unserved queues)."""
        return f"{self.namespace}:registry:queues"

    def sweep_lock(self) -> str:
        """String: the worker sweeping unserved queues now (:mod:`service.worker.sweep`), with a TTL."""
        return f"{self.namespace}:registry:sweep"

    def worker(self, worker_id: str) -> str:
        """String: a live worker's ``WorkerInfo`` JSON, with a TTL refreshed by its heartbeat."""
        return f"{self.namespace}:worker:{worker_id}"

    def arq_health(self, worker_id: str) -> str:
        """String: arq's own health-check line for one worker (arq sets it with a TTL)."""
        return f"{self.namespace}:worker:{worker_id}:arq-health"

    def workers(self) -> str:
        """ZSET: worker id -> last heartbeat (epoch ms)."""
        return f"{self.namespace}:workers"

    # -- plugins' own data -------------------------------------------------------------------
    def plugin_storage(self, plugin: str) -> str:
        """Hash: a plugin's ``self.storage`` (redis backend), key -> JSON value; no TTL: it is the plugin's data."""
        return f"{self.namespace}:storage:{plugin}"

    # -- events -----------------------------------------------------------------------------
    def events(self) -> str:
        """Stream: every worker's events, an entry per flushed batch (``{"events": <JSON array>}``).

        Capped at ``events_max_len`` entries (of up to 500 events each).
        """
        return f"{self.namespace}:events"

    def event_channel(self, kind: str) -> str:
        """Pub/sub channel: per flushed batch, a JSON array of its events of ``kind`` (e.g. ``job_failed``)."""
        return f"{self.namespace}:ch:events:{kind}"

    def event_channel_pattern(self) -> str:
        """``PSUBSCRIBE`` pattern matching every event channel of the namespace."""
        return f"{self.namespace}:ch:events:*"
