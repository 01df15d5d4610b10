"""actionq: a job execution service on Redis.

Producers submit *action jobs* (plugin, action, params) with :class:`JobClient`; worker pools
built on arq run the plugin's action under a timeout; :class:`JobHandle` follows a job to its
result. Plugin authors derive from :class:`Plugin` and may take a :class:`JobContext`.
"""

from service.client.client import JobClient, JobSpec
from service.client.core import PluginCore, PluginsNotReadyError
from service.client.deadletters import DeadLetter, DeadLetterStore
from service.client.handle import JobHandle
from service.client.sync import SyncJobClient, SyncJobHandle
from service.errors import (
    ActionQError,
    ActionQSignal,
    BrokerError,
    CancellationRequested,
    ConfigError,
    DeadLetterNotFoundError,
    ErrorInfo,
    FieldError,
    InvalidParamsError,
    InvalidProgressError,
    JobCancelledError,
    JobConflictError,
    JobExpiredError,
    JobNotFoundError,
    JobSignatureError,
    MalformedJobError,
    ManifestError,
    PayloadTooLargeError,
    PluginActionExecutionError,
    PluginActionTimeoutError,
    PluginError,
    PluginLoadError,
    RecordUnreadableError,
    ReplicationTimeoutError,
    ResultTimeoutError,
    Retry,
    StreamTrimmedError,
    StreamUnavailableError,
    SubmissionError,
    UnknownActionError,
    UnknownPluginError,
    UnservableJobError,
)
from service.events.delegates import DelegateManager, any_true
from service.events.models import (
    BaseEvent,
    DelegateExecutionErrorEvent,
    Event,
    EventKind,
    JobCancelledEvent,
    JobDeadLetteredEvent,
    JobFailedEvent,
    JobProgressEvent,
    JobReceivedEvent,
    JobRetryingEvent,
    JobStartedEvent,
    JobSucceededEvent,
    JobTimedOutEvent,
    PluginDisabledEvent,
    PluginEnabledEvent,
    PluginEvent,
    PluginFailedEvent,
    PluginLoadedEvent,
    ReceivedEvent,
    WorkerErrorEvent,
    WorkerPausedEvent,
    WorkerResumedEvent,
    WorkerStartedEvent,
    WorkerStoppedEvent,
    parse_event,
)
from service.events.pluginevents import InvalidEventError
from service.events.registrations import Registration
from service.keys import Keys
from service.models import (
    TERMINAL_STATES,
    AttemptEnd,
    AttemptInfo,
    CancelOutcome,
    JobOptions,
    JobRecord,
    JobRequest,
    JobState,
    ProgressSnapshot,
    ProgressStatus,
    ProgressUpdate,
    SubTaskProgress,
)
from service.plugins.cancellation import CancellationToken
from service.plugins.checkpoint import Checkpoint
from service.plugins.config import PluginConfig
from service.plugins.context import JobContext, current_job
from service.plugins.decorators import async_handle_errors, async_log_errors, handle_errors, log_errors
from service.plugins.manifest import ActionSpec, ArgumentSpec, PluginManifest
from service.plugins.plugin import Plugin
from service.plugins.progress import SubTask
from service.plugins.registry import RegisteredPlugin, WorkerInfo
from service.plugins.storage import PluginStorage
from service.retry import RetryOverride, RetryPolicy
from service.settings import PluginEntry, Settings, StorageSettings, load_settings

__version__ = "0.1.0"

__all__ = [
    # producers
    "JobClient",
    "JobHandle",
    "JobSpec",
    "SyncJobClient",
    "SyncJobHandle",
    # code written for seed 004's PluginCore
    "PluginCore",
    "PluginsNotReadyError",
    # the job
    "TERMINAL_STATES",
    "ErrorInfo",
    "JobOptions",
    "JobRecord",
    "JobRequest",
    "JobState",
    "AttemptEnd",
    "AttemptInfo",
    "CancelOutcome",
    # reliability: cancellation, retries, dead letters, checkpoints
    "CancellationToken",
    "Checkpoint",
    "DeadLetter",
    "DeadLetterStore",
    "RetryOverride",
    "RetryPolicy",
    # progress
    "ProgressSnapshot",
    "ProgressStatus",
    "ProgressUpdate",
    "SubTask",
    "SubTaskProgress",
    # plugin authors
    "ActionSpec",
    "ArgumentSpec",
    "JobContext",
    "Plugin",
    "PluginConfig",
    "PluginManifest",
    "PluginStorage",
    "current_job",
    "async_handle_errors",
    "async_log_errors",
    "handle_errors",
    "log_errors",
    # delegates and events
    "DelegateManager",
    "Registration",
    "any_true",
    "BaseEvent",
    "Event",
    "EventKind",
    "ReceivedEvent",
    "parse_event",
    "WorkerStartedEvent",
    "WorkerStoppedEvent",
    "WorkerPausedEvent",
    "WorkerResumedEvent",
    "WorkerErrorEvent",
    "PluginLoadedEvent",
    "PluginEnabledEvent",
    "PluginDisabledEvent",
    "PluginFailedEvent",
    "JobReceivedEvent",
    "JobStartedEvent",
    "JobProgressEvent",
    "JobSucceededEvent",
    "JobFailedEvent",
    "JobRetryingEvent",
    "JobTimedOutEvent",
    "JobCancelledEvent",
    "JobDeadLetteredEvent",
    "DelegateExecutionErrorEvent",
    "PluginEvent",
    "InvalidEventError",
    # registry
    "RegisteredPlugin",
    "WorkerInfo",
    # configuration
    "Keys",
    "PluginEntry",
    "Settings",
    "StorageSettings",
    "load_settings",
    # errors
    "ActionQError",
    "ActionQSignal",
    "CancellationRequested",
    "DeadLetterNotFoundError",
    "JobExpiredError",
    "MalformedJobError",
    "JobSignatureError",
    "Retry",
    "BrokerError",
    "ConfigError",
    "FieldError",
    "InvalidParamsError",
    "InvalidProgressError",
    "JobCancelledError",
    "JobConflictError",
    "JobNotFoundError",
    "RecordUnreadableError",
    "ReplicationTimeoutError",
    "ManifestError",
    "PayloadTooLargeError",
    "PluginActionExecutionError",
    "PluginActionTimeoutError",
    "PluginError",
    "PluginLoadError",
    "ResultTimeoutError",
    "StreamTrimmedError",
    "StreamUnavailableError",
    "SubmissionError",
    "UnknownActionError",
    "UnknownPluginError",
    "UnservableJobError",
]
