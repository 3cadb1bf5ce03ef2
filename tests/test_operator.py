"""What an operator sees: stdout holds the summary only, ``--quiet``, ``--print-bios``,
``--summary-json`` (and, further down, the metrics file and the progress display).

The runs are in-process (``make_job(...).run``) except where a process is the point: a signal
(the interrupted run) and a pseudo-terminal (the progress bar).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from artist_bio_gen import exit_codes
from artist_bio_gen.core.reader import count_lines

from .support.cli import CliResult, Job, MakeJob, cli_env, summary_table
from .support.fake_openai import INPUT_TOKENS, bio_for, tokens_for

MODEL = ("--model", "gpt-4.1-mini")
# Prices of 1 USD per million tokens each way: a run's cost is its tokens / 1e6.
PRICES = ("--price-input", "1", "--price-output", "1")
SUMMARY_LABELS = [
    "input lines",
    "already done",
    "committed",
    "skipped",
    "failed",
    "given up",
    "not started",
    "remaining",
    "requests",
    "retries",
    "429s",
    "tokens",
    "cost",
    "job so far",
    "elapsed",
    "rate",
    "exit code",
]
#: The keys of --summary-json whose values depend on the clock (checked apart).
CLOCK_KEYS = {"started_at", "ended_at", "elapsed_seconds", "rate_per_second"}


def summary_json(path: Path) -> dict[str, Any]:
    """The JSON file, its clock-dependent figures checked for shape and order."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    started = datetime.fromisoformat(data["started_at"])
    ended = datetime.fromisoformat(data["ended_at"])
    assert started <= ended
    assert 0 <= data["elapsed_seconds"] <= (ended - started).total_seconds() + 0.01
    return data


def tokens_of(job: Job, indices: range | list[int]) -> dict[str, int]:
    """The tokens the fake charges for the artists ``indices`` of the job, as the JSON has them."""
    total = sum(tokens_for(job.artists[i].name) for i in indices)
    inputs = INPUT_TOKENS * len(indices)
    return {"input_tokens": inputs, "output_tokens": total - inputs, "total_tokens": total}


def expected_json(job: Job, result: CliResult, **figures: Any) -> dict[str, Any]:
    """Every figure of a run's --summary-json, the defaults those of a clean new run."""
    manifest = json.loads((job.dir / "out.job.json").read_text(encoding="utf-8"))
    code = figures.pop("exit_code", exit_codes.EXIT_SUCCESS)
    expected: dict[str, Any] = {
        "format": 1,
        "job": "out",
        "output": "out.jsonl",
        "mode": "online",
        "exit_code": code,
        "exit_meaning": exit_codes.meaning(code),
        "job_id": manifest["job_id"],
        "error": None,
        "interrupted": False,
        "input_lines": len(job.artists),
        "bad_lines": 0,
        "duplicate_lines": 0,
        "already_done": 0,
        "committed": len(job.artists),
        "skipped": 0,
        "failed": 0,
        "given_up": 0,
        "not_started": 0,
        "remaining": 0,
        "requests": len(job.artists),
        "retries": 0,
        "rate_limited": 0,
        "unpriced": 0,
        "batches": None,
    }
    expected.update(figures)
    assert result.code == code, result.stderr
    return expected


def assert_figures(data: dict[str, Any], expected: dict[str, Any]) -> None:
    """``data`` holds exactly the expected figures (costs to float precision)."""
    costs = {key: expected.pop(key) for key in ("cost_usd", "job_cost_usd") if key in expected}
    got = {k: v for k, v in data.items() if k not in CLOCK_KEYS | set(costs)}
    assert got == expected
    for key, value in costs.items():
        assert data[key] == pytest.approx(value, rel=1e-9), key


# -- stdout: the summary only ---------------------------------------------------------------------


def test_a_default_run_prints_only_the_summary_on_stdout(make_job: MakeJob) -> None:
    """stdout is the summary table and nothing else: every figure in its row, aligned; the
    log lines go to stderr, and the HTTP stack's request lines are not among them."""
    job = make_job(5, seed=1101)
    job.fake.add_rule("bad_request", name=job.artists[1].name)

    result = job.run(*job.input_args(*MODEL, *PRICES))

    assert result.code == exit_codes.EXIT_API_FAILURES, result.stderr
    table = summary_table(result.stdout, strict=True)
    assert list(table) == SUMMARY_LABELS
    figures = {label: value for label, (value, _) in table.items()}
    assert figures["input lines"] == "5" and figures["committed"] == "4"
    assert figures["failed"] == "1" and figures["remaining"] == "1"
    assert figures["requests"] == "5" and figures["exit code"] == "4"
    assert table["failed"][1] == "details in out.failures.jsonl"
    assert table["exit code"][1] == exit_codes.meaning(exit_codes.EXIT_API_FAILURES)
    tokens = tokens_of(job, [0, 2, 3, 4])
    assert figures["tokens"] == f"{tokens['total_tokens']:,}"
    assert figures["cost"] == f"${tokens['total_tokens'] / 1e6:,.4f}"
    # One column of values, right-aligned after the labels: every value ends where all do.
    width = max(len(value) for value, _ in table.values())
    for row, (value, _) in zip(result.stdout.splitlines()[1:], table.values(), strict=True):
        assert row[: 20 + width].endswith(value) and row[20 + width : 23 + width] in ("", "   ")
    assert "Summary" not in result.stderr
    assert "HTTP Request" not in result.stderr and "httpx" not in result.stderr
    assert "started job" in result.stderr  # the log is where it was


def test_print_bios_prints_each_committed_bio_before_the_summary(make_job: MakeJob) -> None:
    job = make_job(3, seed=1102)
    result = job.run(*job.input_args(*MODEL, "--print-bios"))
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    bios, summary = result.stdout.split("Summary: job ", 1)
    for artist in job.artists:
        assert f"=== {artist.name} ({artist.artist_id}) ===\n{bio_for(artist.name)}\n" in bios
    assert sum(line.startswith("=== ") for line in bios.splitlines()) == len(job.artists)
    assert list(summary_table("Summary: job " + summary, strict=True)) == SUMMARY_LABELS


def test_the_libraries_log_only_with_verbose(make_job: MakeJob) -> None:
    """The HTTP stack logs each request; that line shows with --verbose and not otherwise."""
    job = make_job(2, seed=1106)
    default = job.run(*job.input_args(*MODEL))
    assert default.code == exit_codes.EXIT_SUCCESS, default.stderr
    assert "HTTP Request" not in default.stderr and "psycopg" not in default.stderr
    verbose = job.run("--overwrite", *job.input_args(*MODEL, "--verbose"))  # a new job
    assert verbose.code == exit_codes.EXIT_SUCCESS, verbose.stderr
    assert "HTTP Request: POST" in verbose.stderr


def test_a_reader_that_went_away_costs_the_run_nothing(make_job: MakeJob) -> None:
    """``artist-bio-gen ... | head -0``: stdout is closed before the summary; the exit code
    is the run's and the reports are written."""
    job = make_job(3, seed=1105)
    proc = job.start_process(*job.input_args(*MODEL, "--summary-json", "s.json"))
    assert proc.stdout is not None
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == exit_codes.EXIT_SUCCESS, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert summary_json(job.dir / "s.json")["committed"] == 3


def test_quiet_prints_only_warnings_and_errors(make_job: MakeJob) -> None:
    """``--quiet``: no summary, no progress and no INFO line; a warning still shows."""
    job = make_job(3, seed=1103, database=False)
    result = job.run(*job.input_args(*MODEL, "--no-db", "--quiet"))
    assert result.code == exit_codes.EXIT_SUCCESS, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines, "the no-database warning is a warning"
    assert all(" WARNING " in line or " ERROR " in line for line in lines), result.stderr
    assert "no database configured" in result.stderr


def test_quiet_and_verbose_contradict_each_other(make_job: MakeJob) -> None:
    job = make_job(1, seed=1104)
    result = job.run(*job.input_args(*MODEL, "--quiet", "--verbose"))
    assert result.code == exit_codes.EXIT_INPUT_ERROR
    assert "--quiet and --verbose contradict each other" in result.stderr


# -- --summary-json -------------------------------------------------------------------------------


def test_summary_json_and_metrics_of_a_known_run(make_job: MakeJob) -> None:
    job = make_job(6, seed=1110)
    result = job.run(
        *job.input_args(*MODEL, *PRICES, "--summary-json", "run.json"), "--metrics-file", "m.prom"
    )
    tokens = tokens_of(job, range(6))
    cost = tokens["total_tokens"] / 1e6
    expected = expected_json(job, result, **tokens, cost_usd=cost, job_bios=6, job_cost_usd=cost)
    data = summary_json(job.dir / "run.json")
    assert_figures(data, expected)
    start, end = timestamps(data)
    assert metrics_of(job.dir / "m.prom") == pytest.approx(
        {
            "run_start_timestamp_seconds": start,
            "run_end_timestamp_seconds": end,
            "last_success_timestamp_seconds": end,
            "running": 0,
            "exit_code": 0,
            "run_duration_seconds": end - start,
            "artists_committed": 6,
            "artists_failed": 0,
            "artists_remaining": 0,
            "requests": 6,
            "tokens": tokens["total_tokens"],
            "cost_usd": cost,
        },
        abs=1e-3,
    )
    assert (job.dir / "run.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in job.dir.glob("run.json*")] == ["run.json"], "no temporary file left"


def test_summary_json_of_a_resumed_run(make_job: MakeJob) -> None:
    """A run stopped at --limit, then the resume: each file holds its own run's figures."""
    job = make_job(7, seed=1111)
    first = job.run(*job.input_args(*MODEL, *PRICES, "--limit", "3", "--summary-json", "a.json"))
    first_tokens = tokens_of(job, range(3))
    first_cost = first_tokens["total_tokens"] / 1e6
    expected = expected_json(
        job,
        first,
        exit_code=exit_codes.EXIT_LIMIT_REACHED,
        error="--limit 3 reached: this run started 3 artists and more are left; run again "
        "with --resume to continue.",
        # The fourth artist was read (that is how the run knows more are left), not sent.
        input_lines=4,
        committed=3,
        requests=3,
        remaining=4,
        **first_tokens,
        cost_usd=first_cost,
        job_bios=3,
        job_cost_usd=first_cost,
    )
    assert_figures(summary_json(job.dir / "a.json"), expected)

    rest = job.run("--resume", *PRICES, "--summary-json", "b.json")
    tokens = tokens_of(job, range(3, 7))
    cost = tokens["total_tokens"] / 1e6
    expected = expected_json(
        job,
        rest,
        input_lines=7,
        already_done=3,
        committed=4,
        requests=4,
        **tokens,
        cost_usd=cost,
        job_bios=7,
        job_cost_usd=first_cost + cost,
    )
    assert_figures(summary_json(job.dir / "b.json"), expected)


def test_summary_json_of_runs_with_failures_and_a_given_up_artist(make_job: MakeJob) -> None:
    """One artist always fails, one fails once after a 5xx retry: failed, retries, remaining;
    the next run gives the first up (``--max-attempts 1``) and has nothing left."""
    job = make_job(5, seed=1112)
    poison, flaky = job.artists[1], job.artists[3]
    job.fake.add_rule("bad_request", name=poison.name)
    job.fake.add_rule("server_error", name=flaky.name, times=1)
    args = ("--max-attempts", "1", "--summary-json", "run.json")
    first = job.run(*job.input_args(*MODEL, *PRICES, *args))
    tokens = tokens_of(job, [0, 2, 3, 4])
    cost = tokens["total_tokens"] / 1e6
    expected = expected_json(
        job,
        first,
        exit_code=exit_codes.EXIT_API_FAILURES,
        committed=4,
        failed=1,
        remaining=1,
        requests=6,
        retries=1,
        **tokens,
        cost_usd=cost,
        job_bios=4,
        job_cost_usd=cost,
    )
    assert_figures(summary_json(job.dir / "run.json"), expected)

    again = job.run("--resume", *PRICES, *args)
    expected = expected_json(
        job,
        again,
        already_done=4,
        committed=0,
        given_up=1,
        requests=0,
        input_tokens=0,
        output_tokens=0,
        total_tokens=0,
        cost_usd=0.0,
        job_bios=4,
        job_cost_usd=cost,
    )
    assert_figures(summary_json(job.dir / "run.json"), expected)


def test_summary_json_of_a_run_that_failed_after_it_started(make_job: MakeJob) -> None:
    """The table does not exist (found after the lock was taken): exit 3, the error, zeros."""
    job = make_job(2, seed=1113)
    result = job.run(*job.input_args(*MODEL, "--db-table", "nosuch", "--summary-json", "s.json"))
    assert result.code == exit_codes.EXIT_CONFIG_ERROR, result.stderr
    assert result.stdout == ""
    data = summary_json(job.dir / "s.json")
    assert data["exit_code"] == exit_codes.EXIT_CONFIG_ERROR
    assert data["exit_meaning"] == exit_codes.meaning(exit_codes.EXIT_CONFIG_ERROR)
    assert "nosuch" in data["error"] and data["error"] in result.stderr
    assert data["committed"] == data["requests"] == 0 and data["job"] == "out"


def test_summary_json_of_a_run_refused_before_it_started(make_job: MakeJob) -> None:
    """No API key: refused while reading the configuration, and still reported (cron's
    monitoring must see every run's exit code)."""
    job = make_job(2, seed=1114)
    result = job.run(
        *job.input_args(*MODEL, "--output", "bios.jsonl", "--summary-json", "s.json"),
        env={"OPENAI_API_KEY": None},
    )
    assert result.code == exit_codes.EXIT_CONFIG_ERROR, result.stderr
    data = summary_json(job.dir / "s.json")
    assert (data["job"], data["output"], data["exit_code"]) == ("bios", "bios.jsonl", 3)
    assert data["error"].startswith("No API key found")


def test_a_summary_json_in_a_missing_directory_is_refused_before_the_run(
    make_job: MakeJob,
) -> None:
    job = make_job(2, seed=1115)
    result = job.run(*job.input_args(*MODEL, "--summary-json", "nodir/s.json"))
    assert result.code == exit_codes.EXIT_INPUT_ERROR
    assert "--summary-json 'nodir/s.json' must be a file in an existing directory" in result.stderr
    assert job.fake.total_requests == 0 and not job.out.exists()


@pytest.mark.timeout(120)
def test_summary_json_and_metrics_of_an_interrupted_run(make_job: MakeJob) -> None:
    """SIGTERM with four artists in flight: they finish, the run exits 130 and the JSON and
    the metrics say so, with exactly what was committed and what is left."""
    job = make_job(20, seed=1116)
    job.fake.add_rule("ok", times=1)
    job.fake.add_rule("hang", delay=1.5)
    proc = job.start_process(
        *job.input_args(*MODEL, *PRICES, "--max-workers", "4", "--summary-json", "s.json"),
        "--metrics-file",
        "bios.prom",
    )
    try:
        assert job.fake.wait_for_requests(5, timeout=60)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == exit_codes.EXIT_INTERRUPTED, stderr
    data = summary_json(job.dir / "s.json")
    assert data["interrupted"] is True and data["exit_code"] == exit_codes.EXIT_INTERRUPTED
    assert data["committed"] == data["requests"] == 5
    assert data["remaining"] == 15
    assert summary_table(stdout)["remaining"][0] == "15"
    tokens = tokens_of(job, range(5))["total_tokens"]
    metrics = metrics_of(job.dir / "bios.prom")
    start, end = timestamps(data)
    assert metrics == pytest.approx(
        {
            "run_start_timestamp_seconds": start,
            "run_end_timestamp_seconds": end,
            "running": 0,
            "exit_code": exit_codes.EXIT_INTERRUPTED,
            "run_duration_seconds": end - start,
            "artists_committed": 5,
            "artists_failed": 0,
            "artists_remaining": 15,
            "requests": 5,
            "tokens": tokens,
            "cost_usd": tokens / 1e6,
        },
        abs=1e-3,
    )
    assert time.time() - datetime.fromisoformat(data["ended_at"]).timestamp() < 60


@pytest.mark.timeout(120)
def test_a_run_stopped_at_once_by_a_second_signal_still_writes_its_reports(
    make_job: MakeJob,
) -> None:
    """The second SIGTERM ends the process at once: the JSON and the metrics are written from
    the live counts first (the metrics must not say "running" for ever)."""
    job = make_job(20, seed=1117)
    job.fake.add_rule("ok", times=1)
    job.fake.add_rule("hang", delay=3600)
    proc = job.start_process(
        *job.input_args(*MODEL, *PRICES, "--max-workers", "4", "--summary-json", "s.json"),
        "--metrics-file",
        "bios.prom",
    )
    try:
        assert job.fake.wait_for_requests(5, timeout=60)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == exit_codes.EXIT_INTERRUPTED, stderr
    data = summary_json(job.dir / "s.json")
    assert data["error"] == "stopped at once by a second signal; run again with --resume"
    assert (data["exit_code"], data["interrupted"]) == (exit_codes.EXIT_INTERRUPTED, True)
    assert (data["committed"], data["requests"], data["remaining"]) == (1, 5, 19)
    assert data["not_started"] == 8, "the window's artists: 4 at the API, 4 queued"
    metrics = metrics_of(job.dir / "bios.prom")
    assert (metrics["running"], metrics["exit_code"]) == (0, exit_codes.EXIT_INTERRUPTED)
    assert (metrics["artists_committed"], metrics["artists_remaining"]) == (1, 19)


# -- --metrics-file -------------------------------------------------------------------------------

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?")
METRIC_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _float(text: str) -> float:
    """A sample value as the text format allows it (Go's ParseFloat, plus NaN and +-Inf)."""
    if text in ("NaN", "+Inf", "-Inf"):
        return float(text.replace("Inf", "inf"))
    assert re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text), f"bad value {text!r}"
    return float(text)


def _labels(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    pairs = []
    rest = text
    while rest:
        match = LABEL.match(rest)
        assert match, f"bad labels {text!r}"
        pairs.append((match.group(1), match.group(2)))
        rest = rest[match.end() :]
        assert rest == "" or rest.startswith(","), f"bad labels {text!r}"
        rest = rest[1:]
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a label twice in {text!r}"
    return tuple(pairs)


def check_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """What ``promtool check metrics`` would reject, as assertions; returns the samples,
    family -> labels -> value. Checked: lines end in a newline; HELP and TYPE at most once per
    family, before its samples, a known TYPE, a HELP text; valid metric and label names and
    label values; float values; every sample has a HELP and a TYPE; a family's lines are
    together; no series twice."""
    assert text.endswith("\n") and "\r" not in text
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    order: list[str] = []
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name, _, rest = line[7:].partition(" ")
            assert METRIC_NAME.fullmatch(name), f"bad metric name {name!r}"
            assert name not in samples, f"{line!r} after the samples of {name}"
            seen = helps if line.startswith("# HELP ") else types
            assert name not in seen, f"two {line[2:6]} lines for {name}"
            seen[name] = rest
            assert rest, f"empty {line[2:6]} for {name}"
            if seen is types:
                assert rest in METRIC_TYPES, f"unknown type {rest!r}"
        elif line.startswith("#") or not line.strip():
            continue
        else:
            match = SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            name, labels = match.group(1), _labels(match.group(2))
            series = samples.setdefault(name, {})
            assert labels not in series, f"series twice: {line!r}"
            series[labels] = _float(match.group(3))
        family = line[7:].split(" ")[0] if line.startswith("# ") else line.split("{")[0]
        if not order or order[-1] != family:
            assert family not in order, f"the lines of {family} are not together"
            order.append(family)
    assert set(samples) <= set(types) and set(samples) <= set(helps), "a sample without HELP/TYPE"
    return samples


def metrics_of(path: Path, job: str = "out") -> dict[str, float]:
    """The checked metrics file: family (without the prefix) -> the job's value."""
    values: dict[str, float] = {}
    for name, series in check_metrics(path.read_text(encoding="utf-8")).items():
        assert list(series) == [(("job", job),)], f"{name}: one sample, labelled job={job}"
        values[name.removeprefix("artist_bio_gen_")] = series[(("job", job),)]
    return values


def timestamps(data: dict[str, Any]) -> tuple[float, float]:
    """(start, end) of a --summary-json, as Unix times."""
    start, end = (datetime.fromisoformat(data[key]) for key in ("started_at", "ended_at"))
    return start.timestamp(), end.timestamp()


def test_the_metrics_validator_rejects_what_promtool_rejects() -> None:
    good = '# HELP a_b An a.\n# TYPE a_b gauge\na_b{job="x"} 1.5e3\n'
    assert check_metrics(good) == {"a_b": {(("job", "x"),): 1500.0}}
    for bad in (
        good + "# TYPE a_b gauge\n",  # two TYPE lines
        good.replace("a_b{", "a-b{"),  # a bad name
        good.replace("1.5e3", "1,5"),  # a bad value
        good.replace('job="x"', "job=x"),  # a bad label
        good.replace("# HELP a_b An a.\n", ""),  # no HELP
        good + 'a_b{job="x"} 2\n',  # the same series twice
        good + '# HELP c A c.\n# TYPE c gauge\nc 1\na_b{job="y"} 1\n',  # a family split
        good.rstrip("\n"),  # no final newline
    ):
        with pytest.raises(AssertionError):
            check_metrics(bad)


def test_metrics_file_of_a_known_run_then_failing_runs_keep_the_last_success(
    make_job: MakeJob,
) -> None:
    """Four runs of one job: stopped at --limit (a success: nothing is wrong), some failed,
    done, refused (no key). Each rewrites the file with its own figures; the last success
    survives the failing runs."""
    job = make_job(6, seed=1120)
    poison = job.artists[5]
    job.fake.add_rule("bad_request", name=poison.name, times=1)  # fails once, then answers
    args = ("--summary-json", "run.json", "--metrics-file", "bios.prom")

    first = job.run(*job.input_args(*MODEL, *PRICES, "--limit", "5", *args))
    assert first.code == exit_codes.EXIT_LIMIT_REACHED, first.stderr
    start, end = timestamps(summary_json(job.dir / "run.json"))
    tokens = tokens_of(job, range(5))["total_tokens"]
    metrics = metrics_of(job.dir / "bios.prom")
    assert metrics == pytest.approx(
        {
            "run_start_timestamp_seconds": start,
            "run_end_timestamp_seconds": end,
            "last_success_timestamp_seconds": end,
            "running": 0,
            "exit_code": exit_codes.EXIT_LIMIT_REACHED,
            "run_duration_seconds": end - start,
            "artists_committed": 5,
            "artists_failed": 0,
            "artists_remaining": 1,
            "requests": 5,
            "tokens": tokens,
            "cost_usd": tokens / 1e6,
        },
        abs=1e-3,
    )
    assert (job.dir / "bios.prom").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in job.dir.glob("bios.prom*")] == ["bios.prom"]
    success = metrics["last_success_timestamp_seconds"]

    failed = job.run("--resume", *PRICES, *args)
    assert failed.code == exit_codes.EXIT_API_FAILURES, failed.stderr
    start, end = timestamps(summary_json(job.dir / "run.json"))
    metrics = metrics_of(job.dir / "bios.prom")
    assert metrics["exit_code"] == exit_codes.EXIT_API_FAILURES
    assert metrics["run_end_timestamp_seconds"] == pytest.approx(end, abs=1e-3)
    assert metrics["last_success_timestamp_seconds"] == success < end
    assert (metrics["artists_committed"], metrics["artists_failed"]) == (0, 1)
    assert (metrics["artists_remaining"], metrics["requests"], metrics["tokens"]) == (1, 1, 0)

    done = job.run("--resume", *PRICES, *args)
    assert done.code == exit_codes.EXIT_SUCCESS, done.stderr
    start, end = timestamps(summary_json(job.dir / "run.json"))
    metrics = metrics_of(job.dir / "bios.prom")
    assert metrics["last_success_timestamp_seconds"] == pytest.approx(end, abs=1e-3)
    assert metrics["run_end_timestamp_seconds"] == metrics["last_success_timestamp_seconds"]
    assert metrics["run_start_timestamp_seconds"] == pytest.approx(start, abs=1e-3)
    assert (metrics["artists_committed"], metrics["artists_remaining"]) == (1, 0)
    assert metrics["exit_code"] == exit_codes.EXIT_SUCCESS
    success = metrics["last_success_timestamp_seconds"]

    refused = job.run("--resume", *args, env={"OPENAI_API_KEY": None})
    assert refused.code == exit_codes.EXIT_CONFIG_ERROR, refused.stderr
    metrics = metrics_of(job.dir / "bios.prom")
    assert metrics["exit_code"] == exit_codes.EXIT_CONFIG_ERROR
    assert metrics["last_success_timestamp_seconds"] == success
    assert metrics["run_end_timestamp_seconds"] > success
    assert metrics["artists_remaining"] == 0, "carried over: the refused run read no input"
    assert (metrics["artists_committed"], metrics["requests"], metrics["running"]) == (0, 0, 0)


@pytest.mark.timeout(120)
def test_a_run_refused_for_the_lock_leaves_the_running_runs_reports_alone(
    make_job: MakeJob,
) -> None:
    """Cron starts the next run while the last one still works: the refused run (exit 75)
    must not overwrite the metrics of the run that holds the job."""
    job = make_job(10, seed=1125)
    job.fake.hold()
    args = ("--metrics-file", "bios.prom", "--summary-json", "s.json")
    proc = job.start_process(*job.input_args(*MODEL, *args))
    try:
        assert job.fake.wait_for_requests(1, timeout=60)
        before = (job.dir / "bios.prom").read_text(encoding="utf-8")
        assert metrics_of(job.dir / "bios.prom")["running"] == 1
        second = job.run("--resume", *args)
        after = (job.dir / "bios.prom").read_text(encoding="utf-8")
    finally:
        job.fake.release()
        proc.communicate(timeout=60)
    assert second.code == exit_codes.EXIT_LOCKED, second.stderr
    assert after == before
    assert proc.returncode == exit_codes.EXIT_SUCCESS
    assert summary_json(job.dir / "s.json")["exit_code"] == exit_codes.EXIT_SUCCESS


def test_a_batch_job_reports_its_batches(make_job: MakeJob) -> None:
    """Batch mode: the batches in the table (above the exit code) and in the JSON; the
    remaining artists are not known to a batch run (null, no metric), the rest is."""
    job = make_job(12, seed=1126)
    job.fake.batches.script(polls=0)
    reports = ("--summary-json", "s.json", "--metrics-file", "m.prom")
    submitted = job.run(
        *job.input_args("--mode", "batch", *MODEL, "--batch-max-requests", "5", *reports)
    )
    assert submitted.code == exit_codes.EXIT_SUCCESS, submitted.stderr
    data = summary_json(job.dir / "s.json")
    assert data["mode"] == "batch" and data["remaining"] is None
    assert data["batches"] == {
        "batches": 3,
        "open": 3,
        "pending_requests": 12,
        "submitted_artists": 12,
        "submitted_batches": 3,
        "collected": 0,
        "collected_cost_usd": 0.0,
        "cancelled": 0,
    }
    assert "artists_remaining" not in metrics_of(job.dir / "m.prom")
    rows = submitted.stdout.splitlines()
    assert rows[-1].startswith("  exit code ") and any("3 open" in row for row in rows)

    collected = job.run("--resume", *reports)
    assert collected.code == exit_codes.EXIT_SUCCESS, collected.stderr
    data = summary_json(job.dir / "s.json")
    assert (data["committed"], data["batches"]["open"], data["batches"]["collected"]) == (12, 0, 12)
    metrics = metrics_of(job.dir / "m.prom")
    assert (metrics["artists_committed"], metrics["exit_code"]) == (12, 0)
    assert summary_table(collected.stdout)["committed"][0] == "12"


# -- progress -------------------------------------------------------------------------------------

PROGRESS = re.compile(
    r"progress: (\d+)/(\d+) artists \([\d.]+%\): committed (\d+), skipped (\d+), failed (\d+), "
    r"given up (\d+), in flight (\d+), already done (\d+); [\d.]+ artists/s, ETA (\S+); "
    r"(\d+) requests, \$[\d.]+ spent"
)


class FileWatcher:
    """Reads a file every 20 ms in a thread of its own, keeping every distinct content."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FileWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            if not self.seen or self.seen[-1] != text:
                self.seen.append(text)


@pytest.mark.timeout(120)
def test_progress_lines_off_a_terminal_come_at_the_interval_with_exact_counts(
    make_job: MakeJob,
) -> None:
    """A resumed run (3 done, 1 to give up) in which one artist fails and the last two take
    2 s: while they hang, the lines (every 0.2 s) and the metrics file show the exact state:
    7 of 9 settled, 5 committed, 1 failed, 1 given up, 2 in flight, 3 already done."""
    job = make_job(12, seed=1130)
    job.fake.add_rule("bad_request", name=job.artists[0].name)
    args = ("--max-attempts", "1", "--max-workers", "4")
    first = job.run(*job.input_args(*MODEL, *args, "--limit", "4", "--metrics-file", "live.prom"))
    assert first.code == exit_codes.EXIT_LIMIT_REACHED, first.stderr
    job.fake.add_rule("bad_request", name=job.artists[5].name)
    for artist in job.artists[10:]:
        job.fake.add_rule("hang", name=artist.name, delay=2.0)

    interval = 0.2
    with FileWatcher(job.dir / "live.prom") as watcher:
        started = time.monotonic()
        result = job.run(
            "--resume", *args, "--progress-interval", str(interval), "--metrics-file", "live.prom"
        )
        elapsed = time.monotonic() - started

    assert result.code == exit_codes.EXIT_API_FAILURES, result.stderr
    lines = [m.groups() for m in PROGRESS.finditer(result.stderr)]
    assert len(lines) == result.stderr.count("progress: "), "every progress line parses"
    # The timer ticks once per interval at most; the 2 s hang alone spans about 10 intervals.
    assert 5 <= len(lines) <= elapsed / interval + 1, (len(lines), elapsed)
    counts = [tuple(int(x) for x in line[:8]) for line in lines]
    for done, total, committed, skipped, failed, given_up, _, already in counts:
        assert total == 9 and already == 3
        assert done == committed + skipped + failed + given_up
    assert counts == sorted(counts, key=lambda c: c[0]), "the counts only grow"
    stalled = (7, 9, 5, 0, 1, 1, 2, 3)
    assert counts.count(stalled) >= 3, result.stderr
    stalled_lines = [line for line in lines if tuple(int(x) for x in line[:8]) == stalled]
    assert all(line[8] != "unknown" and line[9] == "8" for line in stalled_lines)

    snapshots = [metrics_of(job.dir / "live.prom")] + [
        {
            k.removeprefix("artist_bio_gen_"): v[(("job", "out"),)]
            for k, v in check_metrics(t).items()
        }
        for t in watcher.seen
    ]
    running = [m for m in snapshots if m["running"] == 1]
    assert any(
        (m["artists_committed"], m["artists_failed"], m["artists_remaining"], m["requests"])
        == (5, 1, 3, 8)
        for m in running
    ), running
    # While it runs, the file keeps the last finished run's exit code (the first run's).
    assert {m["exit_code"] for m in running} == {exit_codes.EXIT_LIMIT_REACHED}
    final = snapshots[0]
    assert (final["running"], final["artists_committed"], final["artists_remaining"]) == (0, 7, 1)


def test_the_input_of_a_pipe_has_no_line_count(tmp_path: Path) -> None:
    """A FIFO is not counted (reading it would consume it): the total is unknown."""
    fifo = tmp_path / "artists.fifo"
    os.mkfifo(fifo)
    assert count_lines(fifo) is None
    regular = tmp_path / "artists.csv"
    regular.write_bytes(b"artist_id,artist_name\na,b\nc,d")  # the last line has no newline
    assert count_lines(regular) == 3


@pytest.mark.timeout(120)
def test_the_bar_on_a_terminal_shows_a_total_and_an_eta(make_job: MakeJob) -> None:
    """stderr is a pseudo-terminal: the bar counts up to the total with an ETA; stdout (a
    pipe) holds the summary alone."""
    job = make_job(20, seed=1131)
    job.fake.latency = 0.15
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))
    args = job.input_args(*MODEL, *PRICES, "--max-workers", "2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "artist_bio_gen", *args],
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    screen = _read_terminal(primary)
    stdout = proc.communicate(timeout=60)[0].decode("utf-8")
    assert proc.returncode == exit_codes.EXIT_SUCCESS, screen

    frames = re.findall(r"artists:\s+\d+%\|[^|]*\| (\d+)/(\d+) \[(\d\d:\d\d)<([\d:?]+)", screen)
    assert frames, screen
    assert {total for _, total, _, _ in frames} == {"20"}
    assert any(0 < int(n) < 20 and re.fullmatch(r"\d\d:\d\d", eta) for n, _, _, eta in frames)
    assert frames[-1][0] == "20"
    assert "ok 20, failed 0, in flight 0, $" in screen
    assert list(summary_table(stdout, strict=True)) == SUMMARY_LABELS
    assert summary_table(stdout)["committed"][0] == "20"


def _read_terminal(fd: int) -> str:
    """Everything written to the pseudo-terminal until the process closed it."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")
