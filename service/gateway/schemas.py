"""The gateway's request and reply models: what the OpenAPI document at ``/openapi.json`` describes.

Requests forbid unknown fields (a misspelt option is an error naming it, not silently dropped).
A job's own models (:class:`~service.models.JobRecord`, :class:`~service.models.ProgressSnapshot`,
:class:`~service.plugins.registry.WorkerInfo`) are returned as they are.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.errors import ErrorInfo
from service.models import CancelOutcome, JobState
from service.retry import RetryOverride

__all__ = [
    "ActionView",
    "BatchItem",
    "BatchReply",
    "BatchResult",
    "BulkReplayReply",
    "CancelBody",
    "CancelReply",
    "ControlAnswer",
    "ControlOptions",
    "ControlReply",
    "DeadLetterSelection",
    "ErrorBody",
    "ErrorDetail",
    "ExecuteBody",
    "ExecuteReply",
    "FieldProblem",
    "HasPluginReply",
    "InfoReply",
    "PluginCommandBody",
    "PluginView",
    "PurgeReply",
    "QueueView",
    "Readiness",
    "ReplayBody",
    "ReplayReply",
    "ReplayResult",
    "ResultReply",
    "SubmitBody",
    "SubmitOptions",
    "SubmitReply",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldProblem(BaseModel):
    """One invalid field: its dotted location and what is wrong with it (the client's ``FieldError``)."""

    field: str
    message: str


class ErrorDetail(BaseModel):
    """What went wrong: the error's type (the Python client's exception name), a message, the fields."""

    type: str
    message: str
    fields: list[FieldProblem] | None = None


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class SubmitOptions(_Request):
    """How to run the job (the options of ``JobClient.submit``; each is checked as the client checks it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout_s: float | None = Field(default=None, description="Override the action's timeout.")
    queue: str = Field(default="default", description="The lane.")
    defer_s: float | None = Field(default=None, description="Start no earlier than this many seconds from now.")
    at: datetime | None = Field(default=None, description="Start no earlier than this time (ISO 8601).")
    result_ttl_s: int | None = Field(default=None, description="Keep the final record this long.")
    retry: RetryOverride | None = Field(default=None, description="Override the action's retry policy, partially.")
    expires_s: float | None = Field(default=None, description="Queue-wait limit: not started within it, never run.")
    host: str = Field(default="any", description='"any", "remote" or a hostname ("local": the gateway\'s host).')
    watch: bool | None = Field(default=None, description="Publish the job's channel from the start.")
    author: str | None = Field(default=None, description="Who asked for the job, kept in its record.")


class SubmitBody(_Request):
    """``POST /v1/jobs``: run ``plugin.action(**params)``."""

    plugin: str
    action: str
    params: Any = Field(
        default=None,
        description="An object of named arguments; or an array of positional ones, or one value (bound in order).",
    )
    # One frozen default for every body without options (no model built per job).
    options: SubmitOptions = SubmitOptions()


class BatchItem(SubmitBody):
    """One job of ``POST /v1/jobs:batch``; ``idempotency_key`` is its ``Idempotency-Key``."""

    idempotency_key: str | None = Field(default=None, description="The job id (a second submit finds this job).")


class SubmitReply(BaseModel):
    """A submitted job: ``created`` is false when the idempotency key named an existing job."""

    job_id: str
    created: bool
    location: str


class BatchResult(BaseModel):
    """One item's outcome, at its index: a job (``status`` 202, or 200 if it existed) or an error."""

    index: int
    status: int
    job_id: str | None = None
    created: bool | None = None
    error: ErrorDetail | None = None


class BatchReply(BaseModel):
    """Every item's outcome, in the order of the request."""

    results: list[BatchResult]


class ResultReply(BaseModel):
    """A job's outcome; ``done`` is false (status 202) when the wait ran out first."""

    job_id: str
    state: JobState
    done: bool
    result: Any = None
    error: ErrorInfo | None = None


class CancelBody(_Request):
    """``POST /v1/jobs/{id}/cancel``: why (kept in the record)."""

    reason: str = Field(default="cancelled over HTTP", max_length=500)


class CancelReply(BaseModel):
    """What the cancel did (``cancelled_queued``, ``cancelled_running``, ``already_finished``, ``cancel_requested``)."""

    job_id: str
    outcome: CancelOutcome


class ActionView(BaseModel):
    """An action of a plugin, with its arguments as a JSON Schema object."""

    name: str
    description: str
    timeout_s: float | None
    tags: list[str]
    arguments: dict[str, Any]


class PluginView(BaseModel):
    """A plugin in the registry: whether a live worker serves it, its actions."""

    name: str
    version: str
    description: str
    live: bool
    tags: list[str]
    actions: list[ActionView]


class Readiness(BaseModel):
    """``/readyz``: Redis answers and at least one worker is live."""

    ready: bool
    redis: str
    workers: int


class ExecuteBody(_Request):
    """Seed 004's ``POST /execute`` and ``/execute_stream``: ``execute(plugin, method, args, host, author, timeout)``.

    The seed's ``plugin_uuid`` is not taken here (target a host with ``host``)."""

    plugin: str
    method: str
    args: Any = Field(default=None, description="Named arguments (an object), positional ones (an array) or one value.")
    host: str = "any"
    author: str | None = None
    timeout: float | None = Field(default=None, gt=0, description="Seconds to wait for the result (capped).")


class ExecuteReply(BaseModel):
    """The seed's ``(result, error, request_id)``: ``error`` is set when the job did not succeed."""

    result: Any = None
    error: ErrorInfo | None = None
    request_id: str


class HasPluginReply(BaseModel):
    """Seed 004's ``GET /has_plugin``: whether a live worker serves the plugin."""

    name: str
    has_plugin: bool


class InfoReply(BaseModel):
    """Seed 004's ``POST /info``: this node (the gateway's deployment) and what it serves."""

    node: str
    namespace: str
    plugins: list[str]
    workers: int


# -- operations: queues, remote control, dead letters (service.gateway.queues, .operate, .deadletters) ---------
class QueueView(BaseModel):
    """One queue's depth at the time of the request (docs/gateway.md says exactly what each number counts)."""

    queue: str = Field(description="The queue's name without the namespace prefix: <lane>:<plugin>[@<host>].")
    lane: str
    plugin: str
    host: str | None = Field(description="The host the queue is for; null: any host.")
    ready: int = Field(description="Entries due now (score <= now): the next take picks them up.")
    deferred: int = Field(description="Entries due later without a lease: scheduled, retry backoff, limit-parked.")
    running: int = Field(description="Entries due later holding a lease: taken by a worker, running.")
    oldest_ready_age_s: float | None = Field(description="Seconds since the oldest ready entry fell due; null: none.")
    exact: bool = Field(description="False when more entries than the sample could be running (running is a floor).")
    served: bool = Field(description="A live worker reads this queue now.")
    last_served_ms: int | None = Field(description="The last heartbeat of a worker reading it (epoch ms).")


class ControlAnswer(BaseModel):
    """One worker's answer to a command, as ``actionq pause`` prints it: acted, refused (why), or no answer."""

    worker_id: str
    hostname: str | None
    answer: str = Field(description="acted, refused or no_answer")
    result: Any = None
    error: str | None = Field(default=None, description="Why it refused (or that it did not answer in time).")


class ControlReply(BaseModel):
    """What came of a command: ``ok`` when every targeted worker acted."""

    command: str
    command_id: str
    ok: bool
    answers: list[ControlAnswer]


class ControlOptions(_Request):
    """The optional body of ``POST /v1/workers/{id}/<command>``."""

    timeout_s: float = Field(default=3.0, gt=0, description="Seconds to wait for the answer (capped by max_wait_s).")


class PluginCommandBody(_Request):
    """``POST /v1/plugins/{name}/load|disable|reload``: where, and (load, reload) from which folder."""

    host: str = Field(default="any", description='"any" (every worker), "local" (the gateway\'s host) or a hostname.')
    worker: str | None = Field(default=None, description="Only this worker (an id from /v1/workers).")
    path: str | None = Field(default=None, description="The plugin's folder on the workers' machine (load, reload).")
    timeout_s: float = Field(default=10.0, gt=0, description="Seconds to wait for the answers (capped).")


class ReplayBody(_Request):
    """``POST /v1/dead-letters/{id}/replay``: under the same id (the default) or a new one."""

    new_id: bool = Field(default=False, description="Replay under a new random id, leaving the old record as it is.")


class DeadLetterSelection(_Request):
    """The dead letters of a bulk replay or purge: ``ids``, or ``all`` of them (one of the two)."""

    ids: list[str] | None = Field(default=None, description="The job ids.")
    all: bool = Field(default=False, description="Every dead letter (a replay takes at most gateway.max_batch).")
    new_id: bool = Field(default=False, description="Replay only: under new ids.")


class ReplayReply(BaseModel):
    """A replayed dead letter: the job it became (``Location``)."""

    replayed: str = Field(description="The dead letter's job id.")
    job_id: str = Field(description="The new job's id (the same one unless new_id).")
    location: str


class ReplayResult(BaseModel):
    """One dead letter's outcome in a bulk replay: its new job (status 202) or an error."""

    replayed: str
    status: int
    job_id: str | None = None
    location: str | None = None
    error: ErrorDetail | None = None


class BulkReplayReply(BaseModel):
    """Every selected dead letter's outcome, in the order of the request (``all``: newest first)."""

    results: list[ReplayResult]


class PurgeReply(BaseModel):
    """How many dead letters were deleted."""

    purged: int
