"""The pure parts of ``bench compare``: stats and tables, the completion check, /proc parsing, the plan.

No peer, no Redis: what the benchmark computes from what it measured, and how it says so.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections import Counter

import pytest

from bench.cluster import (
    EVENTS,
    NO_KEY,
    PARTITIONED,
    PUBLISH,
    SPUBLISH,
    WORKER_KEYS,
    classify,
    command_key,
    shards_needed,
)
from bench.compare import Sizes
from bench.drain import DrainSample, expected_count, remaining
from bench.jobs import Workload
from bench.options import RunOptions
from bench.peers import peer_module, select
from bench.peers.base import PeerError, gather_window
from bench.procstats import cpu_seconds, parse_stat_cpu_ticks, process_tree
from bench.producer import plan
from bench.table import (
    fmt_ms,
    fmt_rate,
    fmt_ratio,
    main_table,
    markdown_table,
    noop_table,
    ratios_to_fastest_peer,
)
from service.keys import Keys

# -- the completion check -------------------------------------------------------------------


def test_the_counter_grows_by_one_per_incr_job_and_once_for_a_noop_drain() -> None:
    assert expected_count(10_000, "incr") == 10_000
    assert expected_count(10_000, "noop") == 1


def test_remaining_counts_down_to_zero() -> None:
    assert remaining(5, 12) == 7
    assert remaining(12, 12) == 0


def test_a_counter_past_its_final_value_means_a_job_ran_twice() -> None:
    with pytest.raises(PeerError, match=r"saq: the counter is 13, past its final value 12"):
        remaining(13, 12, label="saq")


def test_a_drain_sample_gives_rates_and_costs_per_job() -> None:
    sample = DrainSample(
        jobs=1_000, seconds=0.5, enqueue_seconds=0.25, commands=Counter({"evalsha": 3_000, "incrby": 1_000}), cpu_s=0.4
    )
    assert sample.rate == 2_000
    assert sample.enqueue_rate == 4_000
    assert sample.commands_per_job == 4.0
    assert sample.cpu_ms_per_job == pytest.approx(0.4)


# -- the producer's plan ------------------------------------------------------------------


def test_an_incr_drain_is_one_bulk_enqueue() -> None:
    assert plan(10_000, "incr") == [(10_000, "incr")]


def test_a_noop_drain_ends_with_one_incr_job_as_its_marker() -> None:
    assert plan(10_000, "noop") == [(9_999, "noop"), (1, "incr")]
    assert plan(1, "noop") == [(1, "incr")]


def test_a_bad_plan_is_refused_with_what_was_wrong() -> None:
    with pytest.raises(ValueError, match=r"unknown body 'sleep'; known: incr, noop"):
        plan(10, "sleep")
    with pytest.raises(ValueError, match="at least one job, not 0"):
        plan(0, "incr")


# -- /proc ------------------------------------------------------------------------------------


def test_cpu_ticks_are_read_after_the_command_name_whatever_it_holds() -> None:
    # Fields 14 and 15 (utime, stime) are 11 and 12 after the name; a name may hold ") (".
    stat = "4242 (a ) (b c) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 9 0 1234 5678 90"
    assert parse_stat_cpu_ticks(stat) == 267


def test_a_line_that_is_not_a_stat_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a /proc/<pid>/stat line"):
        parse_stat_cpu_ticks("no parentheses here")


def test_the_process_tree_starts_with_the_process_and_its_cpu_is_counted() -> None:
    assert process_tree(os.getpid())[0] == os.getpid()
    assert cpu_seconds(os.getpid()) > 0


# -- the tables ---------------------------------------------------------------------------


def _runs() -> dict[str, dict[str, dict[int, float]]]:
    return {
        "actionq": {
            "drain": {0: 1_000.0, 1: 1_200.0},
            "start p50": {0: 1.0, 1: 1.2},
            "start p99": {0: 3.0, 1: 3.4},
            "cancel p50": {0: 1.5, 1: 1.5},
            "cancel p99": {0: 2.5, 1: 2.7},
            "drain cmds": {0: 11.4, 1: 15.4},
            "drain cpu": {0: 0.69, 1: 0.69},
        },
        "dramatiq": {
            "drain": {0: 2_000.0, 1: 1_600.0},
            "start p50": {0: 8.6, 1: 8.6},
            "start p99": {0: 207.0, 1: 207.0},
            "cancel p50": {0: math.nan, 1: math.nan},
            "cancel p99": {0: math.nan, 1: math.nan},
            "drain cmds": {0: 11.3, 1: 11.3},
        },
        "taskiq": {"drain": {1: 1_500.0}},  # failed in repetition 0
        "celery": {},  # failed in every repetition
    }


def test_ratios_are_to_the_fastest_peer_of_the_same_repetition_and_actionq_is_no_peer() -> None:
    ratios = ratios_to_fastest_peer(_runs(), "drain")
    assert ratios["actionq"] == {0: 0.5, 1: 0.75}
    assert ratios["dramatiq"] == {0: 1.0, 1: 1.0}
    assert ratios["taskiq"] == {1: 1_500.0 / 1_600.0}
    assert ratios["celery"] == {}


def test_without_a_peer_there_is_no_ratio() -> None:
    assert ratios_to_fastest_peer({"actionq": {"drain": {0: 1_000.0}}}, "drain") == {"actionq": {}}


def test_figures_are_formatted_as_the_report_quotes_them() -> None:
    assert fmt_rate(1_836.4) == "1,836"
    assert fmt_ms(8.62) == "8.6"
    assert fmt_ms(207.4) == "207"
    assert fmt_ratio(0.5812) == "0.58\u00d7"
    for fmt in (fmt_rate, fmt_ms, fmt_ratio):
        assert fmt(math.nan) == "\u2013"


def test_the_main_table_has_medians_ranges_and_ratios_and_no_row_for_a_contender_that_never_ran() -> None:
    table = main_table(_runs(), {"actionq": "actionq (defaults)"}, "one worker")
    lines = table.splitlines()
    assert lines[0].startswith("| one worker | drain jobs/s | vs fastest peer |")
    assert lines[1] == "| --- |" + " ---: |" * 7
    assert lines[2] == (
        "| actionq (defaults) | 1,100 | 0.62\u00d7 | 1.1 / 3.2 | \u2013 | 1.5 / 2.6 | 13.4 (11.4\u201315.4) | 0.69 |"
    )
    assert lines[3] == "| dramatiq | 1,800 | 1.00\u00d7 | 8.6 / 207 | \u2013 | \u2013 | 11.3 | \u2013 |"
    assert lines[4].startswith("| taskiq | 1,500 | 0.94\u00d7 |")
    assert not any(line.startswith("| celery") for line in lines)


def test_the_noop_table_reads_the_noop_figures() -> None:
    runs = {"actionq": {"noop": {0: 2_500.0}, "noop cmds": {0: 9.3}, "idle rss": {0: 56.4}}}
    table = noop_table(runs, {}, "no-op")
    assert table.splitlines()[2] == "| actionq | 2,500 | \u2013 | 9.3 | \u2013 | \u2013 | \u2013 | 56 |"


def test_a_markdown_table_right_aligns_every_column_but_the_first() -> None:
    assert markdown_table(["a", "b"], [["x", "1"]]) == "| a | b |\n| --- | ---: |\n| x | 1 |"


# -- configuration --------------------------------------------------------------------------


def test_a_workload_goes_through_the_environment_and_back() -> None:
    workload = Workload(url="redis://127.0.0.1:1/0", queue="q", counter="q:count", concurrency=8, namespace="ns")
    assert Workload.from_env(workload.env()) == workload


def test_a_missing_variable_is_named() -> None:
    with pytest.raises(RuntimeError, match="BENCH_COUNTER, BENCH_CONCURRENCY"):
        Workload.from_env({"BENCH_REDIS_URL": "redis://x", "BENCH_QUEUE": "q"})


def test_sizes_default_to_the_issue_workload_and_follow_the_options() -> None:
    assert Sizes.of(RunOptions()) == Sizes(jobs=10_000, reps=3, latency_s=10.0, cancels=20, idle_s=3.0)
    assert Sizes.of(RunOptions(jobs=1_000, runs=1)).jobs == 1_000
    assert Sizes.of(RunOptions(jobs=1_000, runs=1)).reps == 1


def test_an_unknown_contender_or_kind_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown contender\(s\) arq-tuned; known: actionq, arq defaults"):
        select(("arq-tuned",))
    with pytest.raises(ValueError, match=r"unknown contender kind 'huey'; known: actionq, arq, celery"):
        peer_module("huey")


def test_only_keeps_actionq_and_the_named_peers() -> None:
    labels = [peer.label for peer in select(("arq tuned",))]
    assert labels == ["actionq", "arq tuned"]


async def test_gather_window_makes_every_call_with_at_most_window_in_flight() -> None:
    in_flight = peak = calls = 0

    async def call() -> None:
        nonlocal in_flight, peak, calls
        in_flight += 1
        calls += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1

    await gather_window(call, 250, window=7)
    assert (calls, peak) == (250, 7)


def test_the_cluster_bench_sorts_commands_by_the_key_they_name() -> None:
    keys = Keys("ns", 6)
    job = keys.job("a")
    assert command_key(["EVALSHA", "abc", "2", job, keys.arq_result("a"), "arg"]) == job
    assert command_key(["EVALSHA", "abc", "0", "arg"]) is None
    assert command_key(["XREAD", "COUNT", "10", "STREAMS", keys.events(), "0"]) == keys.events()
    assert classify(["HSET", job, "state", "queued"], keys) == PARTITIONED
    assert classify(["XADD", keys.events(), "*", "events", "[]"], keys) == EVENTS
    assert classify(["SET", keys.worker("w1"), "{}"], keys) == WORKER_KEYS
    assert classify(["PUBLISH", keys.wake_channel(), "q"], keys) == PUBLISH
    assert classify(["SPUBLISH", keys.wake_channel(keys.tags[0]), "q"], keys) == SPUBLISH
    assert classify(["PING"], keys) == NO_KEY


def test_the_shards_a_rate_needs() -> None:
    assert shards_needed(10_000, 9.0, 0.1, capacity=100_000) == 1
    assert shards_needed(50_000, 9.0, 0.1, capacity=100_000) == 5  # 450,000 / 95,000
    assert shards_needed(2_000_000, 9.0, 0.1, capacity=100_000) is None  # the single keys' node is full
