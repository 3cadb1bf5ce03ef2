"""The bare loop the tool is compared with at L=0: the same SDK calls, nothing else.

``python -m benchmarks.bareloop --workers W --count N --out times.json`` makes N
``openai.OpenAI(...).responses.create(prompt=...)`` calls (the request the tool sends for a
stored prompt) in a ``ThreadPoolExecutor`` of W workers and reads each ``output_text``: no
database, no file, no ledger. It writes the completion time (``time.time()``) and the
duration of every call to ``--out``.
The base URL and key come from the environment, as for the tool.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import openai
from openai.types.responses import ResponsePromptParam

from . import bench_artists

NO_ARTIST_DATA = "No additional data provided"


def _client(workers: int) -> openai.OpenAI:
    # A connection per worker, as the tool sizes its pool (the SDK default holds 1,000).
    limits = httpx2.Limits(max_connections=workers, max_keepalive_connections=workers)
    return openai.OpenAI(
        timeout=120.0, max_retries=3, http_client=openai.DefaultHttpxClient(limits=limits)
    )


def run(
    workers: int, count: int, seed: int, prompt_id: str
) -> tuple[list[float], list[float], int]:
    """Make the calls; returns (sorted completion times, sorted durations, failed calls)."""
    client = _client(workers)
    completions: list[float] = []
    durations: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def call(name: str, data: str | None) -> None:
        variables = {"artist_name": name, "artist_data": data or NO_ARTIST_DATA}
        started = time.monotonic()
        try:
            # {**variables}: the same pairs, as the dict of wider values the SDK's type asks for.
            prompt: ResponsePromptParam = {"id": prompt_id, "variables": {**variables}}
            response = client.responses.create(prompt=prompt)
            _ = response.output_text
        except openai.OpenAIError:
            with lock:
                failures[0] += 1
            return
        durations.append(time.monotonic() - started)  # list.append is atomic
        completions.append(time.time())

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for artist in bench_artists(count, seed):
            pool.submit(call, artist.name, artist.data)
    return sorted(completions), sorted(durations), failures[0]


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prompt-id", default="pmpt_bench")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    completions, durations, failures = run(args.workers, args.count, args.seed, args.prompt_id)
    result = {"completions": completions, "durations": durations, "failures": failures}
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
