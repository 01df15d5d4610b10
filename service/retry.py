"""Retry policies: declared per action in the manifest, overridable per job, with a service default.

A :class:`RetryPolicy` says how many attempts a job gets, how long to wait between them (fixed
or exponential backoff with a multiplier, a cap and jitter), which errors retry and which never
do, and whether timeouts retry. Overrides are partial (:class:`RetryOverride`): a job that sets
only ``max_attempts`` keeps the rest of the action's policy. Plugin code may also raise
``Retry(delay=...)``, which retries after that delay as long as attempts remain.

:func:`decide` is a pure function of the policy, the attempt and how it ended.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RetryDecision", "RetryOverride", "RetryPolicy", "decide", "merge"]


class RetryPolicy(BaseModel):
    """How a job is retried. The defaults retry any error twice (3 attempts), 1 s then 2 s apart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=3, ge=1, le=1000, description="Attempts in all (1 = never retry).")
    backoff: Literal["fixed", "exponential"] = "exponential"
    delay_s: float = Field(default=1.0, ge=0, description="Wait before the first retry (fixed: every retry).")
    multiplier: float = Field(default=2.0, ge=1, description="Exponential: each wait is this times the last.")
    max_delay_s: float = Field(default=300.0, ge=0, description="Cap on any wait, jitter included.")
    jitter: float = Field(default=0.1, ge=0, le=1, description="Each wait varies by ± this fraction, at random.")
    retry_on: list[str] = Field(
        default_factory=list, description="Exception class names that retry (matched along the MRO); empty = any."
    )
    never_retry_on: list[str] = Field(
        default_factory=list, description="Exception class names that never retry; wins over retry_on."
    )
    retry_timeouts: bool = Field(default=False, description="Whether a timed-out attempt is retried.")

    def delay_for(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """The wait after attempt number ``failed_attempt`` (1-based), jittered and capped."""
        steps = 0 if self.backoff == "fixed" else failed_attempt - 1
        base = min(self.delay_s * self.multiplier**steps, self.max_delay_s)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(base * (1 + spread), self.max_delay_s))


class RetryOverride(BaseModel):
    """A partial :class:`RetryPolicy`: only the fields it sets replace the policy it overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    backoff: Literal["fixed", "exponential"] | None = None
    delay_s: float | None = Field(default=None, ge=0)
    multiplier: float | None = Field(default=None, ge=1)
    max_delay_s: float | None = Field(default=None, ge=0)
    jitter: float | None = Field(default=None, ge=0, le=1)
    retry_on: list[str] | None = None
    never_retry_on: list[str] | None = None
    retry_timeouts: bool | None = None


def merge(base: RetryPolicy, *overrides: RetryOverride | None) -> RetryPolicy:
    """``base`` with each override's set fields applied in turn (later ones win)."""
    policy = base
    for override in overrides:
        if override is not None:
            policy = RetryPolicy.model_validate({**policy.model_dump(), **override.model_dump(exclude_none=True)})
    return policy


@dataclass(frozen=True)
class RetryDecision:
    """Whether to run the job again, after how long, and why (for the attempt history and logs)."""

    retry: bool
    delay_s: float
    reason: str


def decide(
    policy: RetryPolicy,
    attempt: int,
    *,
    timed_out: bool = False,
    error_types: tuple[str, ...] = (),
    requested_delay_s: float | None = None,
    rng: random.Random | None = None,
) -> RetryDecision:
    """Decide what happens after attempt ``attempt`` failed.

    ``error_types`` are the class names along the exception's MRO; ``requested_delay_s`` is set
    when plugin code raised ``Retry(delay)``, which retries whatever the error rules say.
    """
    if attempt >= policy.max_attempts:
        return RetryDecision(False, 0.0, f"attempts exhausted ({attempt} of {policy.max_attempts})")
    if requested_delay_s is not None:
        return RetryDecision(True, min(requested_delay_s, policy.max_delay_s), "the action raised Retry")
    if timed_out:
        if not policy.retry_timeouts:
            return RetryDecision(False, 0.0, "timeouts are not retried (retry_timeouts is false)")
    elif blocked := set(error_types) & set(policy.never_retry_on):
        return RetryDecision(False, 0.0, f"{sorted(blocked)[0]} is in never_retry_on")
    elif policy.retry_on and not set(error_types) & set(policy.retry_on):
        return RetryDecision(False, 0.0, f"{error_types[0] if error_types else 'the error'} is not in retry_on")
    return RetryDecision(True, policy.delay_for(attempt, rng), "retryable")
