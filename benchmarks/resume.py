"""A job with a million done artists, built in seconds instead of hours.

A small real run of the tool creates the job (manifest, ledger table, JSONL, checkpoint) in
exactly the form the tool writes. The done artists are then added behind its back the way
the tool would have: ledger rows with COPY, and for each the JSONL line rendered from the
row (``encode_line(CommittedBio)``), and the manifest checkpoint is moved to the
new end of both, so the resumed start does not rescan anything. Finally the input CSV is
rewritten to list every done artist followed by a few new ones.

The manifest keeps no input mark (the seed run's is dropped): the first resume reads past
every done line, as a resume of a job last run by a version without marks, or whose input
changed before its mark, does. That resume ends like any run, writing the mark the next
resume starts from (``add_new_artists`` gives it something to do).
"""

from __future__ import annotations

import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from artist_bio_gen.core.jsonl import encode_line
from artist_bio_gen.jobfiles import Checkpoint, JobPaths, read_manifest, write_manifest
from artist_bio_gen.models import CommittedBio, TokenUsage
from tests.support.data import Artist, append_csv, write_csv

from . import bench_artists
from .database import copy_ledger_rows, ledger_stats, seed_artists
from .fakeserver import FakeServer
from .tool import PROMPT_ID, RunFailed, child_env, job_args, tool_argv

#: Artists committed by the real run that creates the job.
SEED_RUN_ARTISTS = 20
_DONE_SEED = 4242
_NEW_SEED = 4343


@dataclass(frozen=True)
class ResumeJob:
    """A job ready to be resumed."""

    output: Path
    job_id: str
    done: int
    new: int


def _bio(name: str) -> str:
    # The size of a fake answer (~300 characters); the resumed start reads neither texts
    # from the ledger nor lines from the JSONL, so the exact text does not matter.
    year = 1960 + zlib.crc32(name.encode("utf-8")) % 60
    return (
        f"{name} is an artist who emerged from the café scene in {year}. Critics praise "
        f"{name}'s naïve warmth — part über-precise arrangement, part reverie. {name} "
        "still tours widely and remains a touchstone for younger musicians."
    )


def _ledger_rows(
    job_id: str, artists: Iterator[Artist], jsonl: BinaryIO
) -> Iterator[tuple[object, ...]]:
    """Ledger rows for ``artists``; writes each row's JSONL line to ``jsonl`` as it goes."""
    created = int(time.time())
    for index, artist in enumerate(artists):
        text = _bio(artist.name)
        tokens = TokenUsage(50, len(text) // 4, 50 + len(text) // 4)
        response_id = f"resp_bench{index:022x}"
        row = CommittedBio(
            artist.artist_id,
            artist.name,
            artist.data,
            response_id,
            text,
            created,
            "updated",
            tokens,
            0,
        )
        jsonl.write(encode_line(row, PROMPT_ID, None))
        yield (
            job_id,
            artist.artist_id,
            artist.name,
            artist.data,
            response_id,
            text,
            PROMPT_ID,
            None,
            None,
            created,
            "updated",
            *tokens,
        )


def _seed_run(workdir: Path, url: str, server: FakeServer, first: list[Artist]) -> Path:
    """A real run over ``first``: creates the job, its ledger table and its files."""
    csv_path = write_csv(workdir / "input.csv", first)
    output = workdir / "out.jsonl"
    result = subprocess.run(
        tool_argv(*job_args(csv_path, output, 4)),
        cwd=workdir,
        env=child_env(server.base_url, url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RunFailed(f"the seed run exited with {result.returncode}:\n{result.stderr[-2000:]}")
    return output


def build_resume_job(workdir: Path, url: str, server: FakeServer, done: int, new: int) -> ResumeJob:
    """A job of ``done`` committed artists whose input lists ``new`` more at its end."""
    seed_count = min(SEED_RUN_ARTISTS, done)
    done_artists = bench_artists(done, _DONE_SEED)
    first = [next(done_artists) for _ in range(seed_count)]
    new_artists = list(bench_artists(new, _NEW_SEED, prefix="New"))
    seed_artists(url, [*first, *new_artists])
    output = _seed_run(workdir, url, server, first)
    paths = JobPaths(output)
    manifest = read_manifest(paths)
    if manifest is None:
        raise RuntimeError(f"the seed run left no job manifest beside {output}")
    with open(output, "ab") as jsonl:
        copy_ledger_rows(url, _ledger_rows(manifest.job_id, done_artists, jsonl))
    rows, last_seq = ledger_stats(url, manifest.job_id)
    checkpoint = Checkpoint(jsonl_size=output.stat().st_size, ledger_seq=last_seq, lines=rows)
    write_manifest(paths, replace(manifest, checkpoint=checkpoint, input_mark=None))
    # The input as a user would have it: every artist of the job, the new ones last.
    write_csv(Path(manifest.input), bench_artists(done, _DONE_SEED))
    append_csv(Path(manifest.input), new_artists)
    return ResumeJob(output, manifest.job_id, rows, new)


def add_new_artists(url: str, job: ResumeJob, seed: int) -> ResumeJob:
    """``job.new`` more artists at the end of the input (and in the user's table), after a
    resume did the previous ones: the job then has that many more done."""
    more = list(bench_artists(job.new, seed, prefix="Newer"))
    seed_artists(url, more)
    manifest = read_manifest(JobPaths(job.output))
    if manifest is None:
        raise RuntimeError(f"the job beside {job.output} has no manifest")
    append_csv(Path(manifest.input), more)
    return replace(job, done=job.done + job.new)
