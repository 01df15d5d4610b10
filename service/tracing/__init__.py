"""OpenTelemetry traces, an optional extra (``actionq[otel]``): docs/operations.md#traces.

A span per submit (``submit <plugin>.<action>``, kind PRODUCER, in the client's process) and per
attempt (``attempt <plugin>.<action>``, kind CONSUMER, in the worker's), linked across processes by
the W3C ``traceparent`` that the submit puts in the job request (``JobOptions.traceparent``). The
Redis commands sent inside them are spans of their own (opentelemetry-instrumentation-redis).

Off by default (``tracing.enabled``), and then free: this module imports nothing of OpenTelemetry,
:func:`start` returns ``None`` without importing :mod:`service.tracing.otel`, and the client and the
executor keep that ``None``: one ``is None`` check per job is all that tracing costs them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from service.errors import ConfigError
from service.settings import TracingSettings

if TYPE_CHECKING:
    from service.tracing.otel import Tracing

__all__ = ["provider_installed", "start"]


def start(settings: TracingSettings) -> Tracing | None:
    """The process's :class:`~service.tracing.otel.Tracing` when ``settings.enabled``, else ``None``.

    The first call with tracing on sets OpenTelemetry up for the process, once: the exporter that
    ``settings.exporter`` names (unless the application installed a TracerProvider already) and
    redis-py's instrumentation. Raises :class:`~service.errors.ConfigError` when the ``otel`` extra
    (or the exporter's package) is not installed.
    """
    if not settings.enabled:
        return None
    try:
        from service.tracing import otel  # only now: with tracing off, OpenTelemetry is never imported
    except ImportError as exc:
        raise ConfigError(
            f"tracing.enabled is true, but OpenTelemetry is not installed: pip install 'actionq[otel]' ({exc})"
        ) from exc
    return otel.process_tracing(settings)


def provider_installed() -> bool:
    """Whether this process has an OpenTelemetry TracerProvider installed (by actionq or anyone else).

    Read without importing OpenTelemetry: if its trace API was never imported, none was installed.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)
