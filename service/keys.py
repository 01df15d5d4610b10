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

**On Redis Cluster** (``partitions > 0``) every job belongs to one of ``partitions`` partitions,
chosen from its id (:meth:`Keys.partition`), and each partition has a hash tag: a ``{...}`` that
Redis Cluster hashes instead of the whole name, so every key with that tag lives in one slot. The
job's keys (record, lease, result, stream, checkpoint, dead letter) carry its partition's tag after
their prefix (``<ns>:job:{<tag>}<id>``), and each queue is ``partitions`` sorted sets, one per
partition (``<ns>:queue:<lane>:<plugin>[@<host>]{<tag>}``), each with its own idle set and dead-letter
index: so a job's whole life is in one slot, and every script call names keys of one slot. A
worker takes from each partition with a call of its own. The tags are picked so that partition
``p`` of ``P`` hashes into the ``p``-th ``P``-th of the slot range: a cluster whose slots are split
evenly (what ``redis-cli --cluster create`` does) gets the partitions spread evenly over its masters.

Channels: on one Redis every channel is classic (``PUBLISH``/``SUBSCRIBE``). On a cluster a
classic ``PUBLISH`` is carried by the cluster bus to every node, so the channels that carry a
message per job or per batch of jobs are **sharded** instead (``SPUBLISH``/``SSUBSCRIBE``, Redis 7):
a job's channel, each partition's hand-off and wake-up channels, and the events' channels (one tag
of their own). Their names *begin* with their tag (``{<tag>}<ns>:ch:job:<id>``), which is how the
scripts and :mod:`service.redis.pubsub` tell them apart (:func:`is_sharded_channel`); the rare
broadcasts (cancel, control, the queue-wide wake) stay classic.

Why partitions by job id rather than one tag per queue (BullMQ's and streaq's layout): a job is
then found from its id alone (every client call, the gateway's ``/v1/jobs/{id}``), and one busy
queue is spread over the shards instead of being bound to one. A plain Redis (``partitions == 0``)
keeps the names above, without tags.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from service.arqformat import IN_PROGRESS_PREFIX, RESULT_PREFIX

__all__ = ["DEFAULT_NAMESPACE", "Keys", "is_sharded_channel", "partition_tags"]

DEFAULT_NAMESPACE = "actionq"

_TAG_SUFFIX = re.compile(r"(?<=.)\{[^{}]+\}$")  # a partition tag ends a queue set, after its name


def is_sharded_channel(channel: str) -> bool:
    """True for a sharded channel (``SPUBLISH``/``SSUBSCRIBE``): on a cluster, one whose name begins
    with a partition's tag. A namespace cannot begin with ``{``, so on one Redis none is."""
    return channel.startswith("{")


def partition_tags(namespace: str, partitions: int) -> tuple[str, ...]:
    """The hash tags (with braces) of ``partitions`` partitions: tag ``p`` hashes into the ``p``-th
    ``partitions``-th of the cluster's slot range (the first of ``<ns>.<p>``, ``<ns>.<p>.1``, ... that does)."""
    tags = []
    for p in range(partitions):
        low, high = p * REDIS_CLUSTER_HASH_SLOTS // partitions, (p + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
        salt = 0
        while True:
            body = f"{namespace}.{p}" + (f".{salt}" if salt else "")
            if low <= key_slot(body.encode()) < high:
                break
            salt += 1
        tags.append("{" + body + "}")
    return tuple(tags)


@dataclass(frozen=True, slots=True)
class Keys:
    """Key and channel names for one namespace (``partitions``: the Redis Cluster layout; 0: one Redis)."""

    namespace: str = DEFAULT_NAMESPACE
    partitions: int = 0
    tags: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", partition_tags(self.namespace, self.partitions))

    # -- partitions (Redis Cluster) -----------------------------------------------------------
    def partition(self, job_id: str) -> int:
        """The partition of ``job_id`` (0 on one Redis)."""
        return zlib.crc32(job_id.encode()) % self.partitions if self.partitions else 0

    def _tag(self, job_id: str) -> str:
        return self.tags[zlib.crc32(job_id.encode()) % self.partitions] if self.partitions else ""

    def job_tag(self, job_id: str) -> str:
        """The hash tag (with braces) of ``job_id``'s partition; ``""`` on one Redis."""
        return self._tag(job_id)

    @staticmethod
    def set_tag(queue_set: str) -> str:
        """The partition's tag that ends ``queue_set`` (one of :meth:`queue_sets`); ``""`` on one Redis."""
        found = _TAG_SUFFIX.search(queue_set)
        return found.group() if found else ""

    def queue_of(self, queue: str, job_id: str) -> str:
        """The sorted set of (logical) ``queue`` holding ``job_id``: its partition's (``queue`` on one Redis)."""
        return queue + self._tag(job_id)

    def queue_sets(self, queue: str) -> list[str]:
        """Every sorted set of (logical) ``queue``: one per partition (``[queue]`` on one Redis)."""
        return [queue + tag for tag in self.tags] if self.partitions else [queue]

    def every_queue_set(self, queues: list[str]) -> list[str]:
        """The sorted sets of every queue of ``queues`` (partition by partition within each queue)."""
        return [queue_set for queue in queues for queue_set in self.queue_sets(queue)]

    def logical_queue(self, queue_set: str) -> str:
        """The queue a sorted set of :meth:`queue_sets` belongs to (its name less the partition's tag)."""
        return _TAG_SUFFIX.sub("", queue_set) if self.partitions else queue_set

    @staticmethod
    def logical_queue_name(queue_set: str) -> str:
        """:meth:`logical_queue` for any layout (queue names hold no braces: a ``{...}`` at the end is a tag)."""
        return _TAG_SUFFIX.sub("", queue_set)

    def layout(self) -> str:
        """String: on Redis Cluster, the namespace's partition count, set by the first process to use it."""
        return f"{self.namespace}:layout"

    def slot(self, key: str) -> int:
        """The cluster slot of ``key``: keys of one script call share it (0 on one Redis)."""
        return key_slot(key.encode()) if self.partitions else 0

    # -- jobs -------------------------------------------------------------------------------
    def job(self, job_id: str) -> str:
        """Hash: the service's ``JobRecord`` of a live job (an ended job's is in its arq result)."""
        return f"{self.namespace}:job:{self._tag(job_id)}{job_id}"

    def job_channel(self, job_id: str) -> str:
        """Pub/sub channel: state changes and progress of one job (sharded on a cluster)."""
        return self.job_channel_prefix(self._tag(job_id)) + job_id

    def job_channel_prefix(self, tag: str = "") -> str:
        """What :meth:`job_channel` puts before the id of a job of partition ``tag`` (:meth:`job_tag`;
        the submit and take scripts, each called for one partition, name their jobs' channels so)."""
        return f"{tag}{self.namespace}:ch:job:"

    def job_stream(self, job_id: str) -> str:
        """Stream: the items a generator action yielded, ended by a terminal marker entry."""
        return f"{self.namespace}:stream:{self._tag(job_id)}{job_id}"

    def checkpoint(self, job_id: str) -> str:
        """String: the JSON state a job saved with ``ctx.checkpoint.save``; gone when the job ends."""
        return f"{self.namespace}:checkpoint:{self._tag(job_id)}{job_id}"

    def cancel_channel(self) -> str:
        """Pub/sub channel to every worker: ``{"job_id", "reason", "generation", "ts", "sig"}`` of a job to cancel."""
        return f"{self.namespace}:ch:cancel"

    # -- dead letters -----------------------------------------------------------------------
    def dead_letters(self, job_id: str = "") -> str:
        """ZSET: job id -> when it was dead-lettered (epoch ms); on Redis Cluster, ``job_id``'s partition's."""
        return f"{self.namespace}:dead" + (self._tag(job_id) if job_id else "")

    def dead_letter_indexes(self) -> list[str]:
        """Every dead-letter index: one per partition (one on one Redis)."""
        return [f"{self.namespace}:dead{tag}" for tag in self.tags] if self.partitions else [self.dead_letters()]

    def dead_letter(self, job_id: str) -> str:
        """String: a dead letter's JSON (request, attempt history, final error)."""
        return f"{self.namespace}:dead:{self._tag(job_id)}{job_id}"

    def arq_job_id(self, job_id: str) -> str:
        """The id arq knows the job by: namespaced, because arq's key prefixes are global."""
        return f"{self.namespace}:{self._tag(job_id)}{job_id}"

    def job_id_from_arq(self, arq_job_id: str) -> str:
        """Inverse of :meth:`arq_job_id`."""
        prefix = f"{self.namespace}:"
        if not arq_job_id.startswith(prefix):
            raise ValueError(f"arq job id {arq_job_id!r} is not in namespace {self.namespace!r}")
        job_id = arq_job_id[len(prefix) :]
        if self.partitions:
            tag, closed, job_id = job_id.partition("}")
            if not closed or tag + "}" != self._tag(job_id):
                raise ValueError(f"arq job id {arq_job_id!r} does not carry its partition's tag")
        return job_id

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

    def wake_channel(self, tag: str = "") -> str:
        """Pub/sub channel: a queue's name announced here wakes the workers reading it at once.

        ``tag``: on a cluster, a partition's (sharded) channel, where a submit to that partition
        announces a deferred job; without, the classic one every worker hears (given-back jobs,
        promoted waiters of a concurrency limit).
        """
        return f"{tag}{self.namespace}:ch:wake"

    def wake_channels(self) -> list[str]:
        """Every wake channel a worker listens to: the classic one, and on a cluster each partition's."""
        return [self.wake_channel(), *(self.wake_channel(tag) for tag in self.tags)]

    def idle_workers(self, queue: str) -> str:
        """ZSET: id of each worker waiting for ``queue``'s jobs -> until when (epoch ms) it says so.

        A submit that finds one hands the job straight to it (``service/redis/lua/submit.lua``).
        """
        return f"{self.namespace}:idle:" + queue.removeprefix(self.queue_prefix())

    def worker_channel(self, worker_id: str, tag: str = "") -> str:
        """The channel of jobs handed to (or waking) ``worker_id`` from partition ``tag`` (``""`` on one Redis)."""
        return self.worker_channel_prefix(tag) + worker_id

    def worker_channels(self, worker_id: str) -> list[str]:
        """Pub/sub channels of jobs handed straight to one (idle) worker by a submit, or of the job
        that woke it: one on one Redis, one per partition (sharded) on a cluster, where a submit's
        ``SPUBLISH`` counts the receivers on the partition's own node, exactly."""
        return [self.worker_channel(worker_id, tag) for tag in self.tags or ("",)]

    def worker_channel_prefix(self, tag: str = "") -> str:
        """What a worker channel of partition ``tag`` puts before the worker id (the submit script
        names a listed worker's channel)."""
        return f"{tag}{self.namespace}:ch:worker:"

    def queue_prefix(self) -> str:
        """Prefix shared by every queue of the namespace (for listing them)."""
        return f"{self.namespace}:queue:"

    def queue_plugin(self, queue: str) -> str:
        """The plugin whose jobs :meth:`queue` ``queue`` holds (inverse of its naming; names have no ``:``)."""
        return self.logical_queue(queue).removeprefix(self.queue_prefix()).partition(":")[2].partition("@")[0]

    # -- concurrency limits -----------------------------------------------------------------
    def limit_slots(self, plugin: str, action: str | None = None) -> str:
        """ZSET: the running attempts (``<job id>#<attempt>``) holding a slot of one concurrency limit
        -> until when (Redis's clock, epoch ms) unless renewed: a plugin's, or one action's.

        :mod:`service.worker.limits`; names cannot contain ``:``, so the two kinds never collide.
        """
        base = f"{self.namespace}:limit:{self._limit_tag(plugin)}{plugin}"
        return base if action is None else f"{base}:{action}"

    def limit_waiting(self, plugin: str, action: str | None = None) -> str:
        """ZSET: the jobs a limit refused (``<queue>\\n<arq job id>``) -> when submitted (epoch ms):
        promoted, oldest first, when its slots come free (:mod:`service.worker.limits`)."""
        base = f"{self.namespace}:limit-waiting:{self._limit_tag(plugin)}{plugin}"
        return base if action is None else f"{base}:{action}"

    def _limit_tag(self, plugin: str) -> str:
        """On Redis Cluster one tag per plugin: its limits' slot and waiting sets are taken in one call."""
        return "{" + f"{self.namespace}.limit.{plugin}" + "}" if self.partitions else ""

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
        """String: a live worker's ``WorkerInfo`` JSON, with a TTL refreshed by its heartbeat.

        On Redis Cluster every worker's key has one tag: the registry reads them with one ``MGET``.
        """
        tag = "{" + self.namespace + ".workers}" if self.partitions else ""
        return f"{self.namespace}:worker:{tag}{worker_id}"

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
        """Pub/sub channel: per flushed batch, a JSON array of its events of ``kind`` (e.g. ``job_failed``).

        On a cluster sharded, every kind with one tag of its own: a batch's messages go to one node,
        not over the cluster bus to all of them.
        """
        tag = "{" + self.namespace + ".events}" if self.partitions else ""
        return f"{tag}{self.namespace}:ch:events:{kind}"

    def event_channel_pattern(self) -> str:
        """``PSUBSCRIBE`` pattern matching every event channel of the namespace (one Redis: sharded
        channels have no patterns)."""
        return f"{self.namespace}:ch:events:*"
