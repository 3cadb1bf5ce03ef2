"""The JSONL writer: record format, whole lines under concurrency, torn tails, full disks."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from artist_bio_gen.core.jsonl import JsonlWriter, build_record, encode_line
from artist_bio_gen.core.output import (
    append_jsonl_response,
    get_processed_artist_ids,
    initialize_jsonl_output,
    write_jsonl_output,
)
from artist_bio_gen.errors import OutputWriteError
from artist_bio_gen.models import ApiResponse

from .support.checks import read_jsonl


def _response(index: int, data: str | None = None, text: str | None = None) -> ApiResponse:
    return ApiResponse(
        artist_id=f"00000000-0000-4000-8000-{index:012d}",
        artist_name=f"Artist {index} — Ñandú",
        artist_data=data,
        response_text=text if text is not None else f"Bio {index}: déjà vu " + "x" * (index % 300),
        response_id=f"resp_{index}",
        created=1_700_000_000 + index,
        db_status="updated",
    )


def test_record_has_the_legacy_keys_in_order() -> None:
    record = build_record(_response(1, data='{"spotify": "s"}'), "pmpt_1", "3")
    assert list(record) == [
        "artist_id",
        "artist_name",
        "request",
        "response_text",
        "response_id",
        "created",
        "db_status",
        "error",
        "artist_data",
    ]
    assert record["request"] == {
        "prompt_id": "pmpt_1",
        "variables": {"artist_name": "Artist 1 — Ñandú", "artist_data": '{"spotify": "s"}'},
        "version": "3",
    }


def test_record_without_data_or_version_or_database() -> None:
    record = build_record(_response(2)._replace(db_status=None), "pmpt_1")
    assert "artist_data" not in record
    assert "version" not in record["request"]
    assert record["request"]["variables"]["artist_data"] == "No additional data provided"
    # The legacy tool wrote the string "null" when the database was off.
    assert record["db_status"] == "null"
    assert record["error"] is None


def test_encoded_line_is_utf8_not_escaped() -> None:
    line = encode_line(_response(3), "p")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert "Ñandú".encode() in line
    assert json.loads(line)["artist_name"] == "Artist 3 — Ñandú"


def test_append_creates_the_file_and_appends(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    append_jsonl_response(_response(1), out, "p")
    append_jsonl_response(_response(2), out, "p", version="7")
    records = read_jsonl(out)
    assert [r["artist_id"] for r in records] == [_response(1).artist_id, _response(2).artist_id]
    assert records[1]["request"]["version"] == "7"


def test_append_without_create_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OutputWriteError):
        append_jsonl_response(
            _response(1), tmp_path / "missing.jsonl", "p", create_if_missing=False
        )
    assert not (tmp_path / "missing.jsonl").exists()


def test_write_jsonl_output_never_truncates(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_jsonl_output([_response(1)], out, "p")
    write_jsonl_output([_response(2), _response(3)], out, "p")
    assert len(read_jsonl(out)) == 3


def test_initialize_moves_an_existing_file_aside(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_jsonl_output([_response(1)], out, "p")
    moved = initialize_jsonl_output(out, overwrite_existing=True)
    assert moved is not None and len(read_jsonl(moved)) == 1
    assert out.exists() and out.stat().st_size == 0


def test_processed_ids_ignore_failed_and_torn_lines(tmp_path: Path) -> None:
    out = tmp_path / "legacy.jsonl"
    ok = build_record(_response(1), "p")
    failed = {**build_record(_response(2), "p"), "response_text": "", "error": "APIError: boom"}
    db_failed = {**build_record(_response(3), "p"), "db_status": "error"}
    lines = [json.dumps(r) for r in (ok, failed, db_failed)]
    out.write_text("\n".join(lines) + "\n" + lines[0][:20], encoding="utf-8")
    assert get_processed_artist_ids(out) == {_response(1).artist_id}


def test_opening_truncates_a_torn_tail(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    whole = encode_line(_response(1), "p")
    out.write_bytes(whole + encode_line(_response(2), "p")[:40])
    with JsonlWriter(out) as writer:
        assert writer.repaired_bytes == 40
        writer.append_line(encode_line(_response(3), "p"))
    assert [r["response_id"] for r in read_jsonl(out)] == ["resp_1", "resp_3"]


def _append_from_8_threads(writer: JsonlWriter) -> None:
    """8 threads x 500 appends through one writer (responses 0-499, 1000-1499, ...)."""

    def worker(base: int) -> None:
        for i in range(500):
            writer.append_line(encode_line(_response(base + i), "p"))

    threads = [threading.Thread(target=worker, args=(t * 1000,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_threads_append_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with JsonlWriter(out) as writer:
        _append_from_8_threads(writer)
    records = read_jsonl(out)
    assert len(records) == 4000
    assert {r["response_id"] for r in records} == {
        f"resp_{t * 1000 + i}" for t in range(8) for i in range(500)
    }


def _process_appender(path: str, base: int) -> None:
    for i in range(500):
        append_jsonl_response(_response(base + i), path, "p")


def test_threads_and_processes_together_write_6000_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_process_appender, args=(str(out), 100_000 + p * 1000))
        for p in range(4)
    ]
    for process in processes:
        process.start()
    with JsonlWriter(out) as writer:
        _append_from_8_threads(writer)
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    records = read_jsonl(out)  # every line parses: none interleaved or torn
    assert len(records) == 6000
    expected = {f"resp_{t * 1000 + i}" for t in range(8) for i in range(500)}
    expected |= {f"resp_{100_000 + p * 1000 + i}" for p in range(4) for i in range(500)}
    assert {r["response_id"] for r in records} == expected
    for record in records:  # each line is the exact record, not a splice of two
        index = int(record["response_id"].removeprefix("resp_"))
        assert record == build_record(_response(index), "p")


_FULL_DISK_SCRIPT = """
import resource, sys
from artist_bio_gen.core.jsonl import JsonlWriter, encode_line
from artist_bio_gen.errors import OutputWriteError
from artist_bio_gen.models import ApiResponse
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
with JsonlWriter(sys.argv[1], hold_lock=sys.argv[3] == "held") as writer:
    for i in range(10_000):
        artist_id = f"00000000-0000-4000-8000-{i:012d}"
        line = ApiResponse(artist_id, "A", None, "b" * 333, f"r{i}", 1, "updated")
        try:
            writer.append_line(encode_line(line, "p"))
        except OutputWriteError as exc:
            print(i, exc)
            sys.exit(0)
sys.exit(1)
"""


@pytest.mark.parametrize("lock", ["per-write", "held"])
def test_a_full_disk_leaves_a_complete_last_line(tmp_path: Path, lock: str) -> None:
    """Also for a writer that holds the lock for good (a run's), which keeps the file's size
    in memory instead of looking before every write."""
    out = tmp_path / "out.jsonl"
    limit = 10_000  # RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SCRIPT, str(out), str(limit), lock],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    written, message = result.stdout.split(" ", 1)
    assert "the file was restored to its last complete line" in message
    records = read_jsonl(out)  # ends in a newline; every line parses
    assert len(records) == int(written) > 0
    assert out.stat().st_size <= limit


def test_fsync_interval_mode_still_writes_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with JsonlWriter(out, fsync_interval=0.05) as writer:
        for i in range(200):
            writer.append_line(encode_line(_response(i), "p"))
    assert len(read_jsonl(out)) == 200


def test_lock_file_is_kept_after_use(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    append_jsonl_response(_response(1), out, "p")
    # Deleting lock files lets two writers lock two different inodes.
    assert (tmp_path / "out.jsonl.lock").exists()


def test_a_failed_group_write_fails_every_line_of_it_and_nothing_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines sharing a failed write all raise; the file keeps only whole lines; the writer
    goes on working afterwards."""
    import errno

    import artist_bio_gen.core.jsonl as jsonl

    out = tmp_path / "out.jsonl"
    real_write = os.write
    gate = threading.Event()
    calls = {"n": 0}

    def flaky_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            gate.wait(5)  # hold the first batch so the others queue up behind it
            return real_write(fd, data)
        if calls["n"] == 2:
            real_write(fd, data[: len(data) // 2])  # half of the second batch, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(jsonl.os, "write", flaky_write)
    results: dict[int, str] = {}
    with JsonlWriter(out) as writer:

        def worker(index: int) -> None:
            try:
                writer.append_line(encode_line(_response(index), "p"))
                results[index] = "ok"
            except OutputWriteError:
                results[index] = "failed"

        first = threading.Thread(target=worker, args=(0,))
        first.start()
        while calls["n"] == 0:
            pass
        others = [threading.Thread(target=worker, args=(i,)) for i in range(1, 9)]
        for thread in others:
            thread.start()
        gate.set()
        for thread in [first, *others]:
            thread.join(10)
            assert not thread.is_alive(), "a writer thread hung"
        writer.append_line(encode_line(_response(99), "p"))  # the writer still works
    assert results[0] == "ok"
    failed = [i for i, r in results.items() if r == "failed"]
    assert failed, "the second batch should have failed"
    records = read_jsonl(out)  # whole lines only: the half-written batch was cut
    assert {r["response_id"] for r in records} == {
        f"resp_{i}" for i, r in results.items() if r == "ok"
    } | {"resp_99"}


def test_a_writer_holding_the_lock_keeps_other_processes_waiting(tmp_path: Path) -> None:
    """hold_lock (what a run uses) keeps the cross-process lock from open to close: another
    process's append waits, then lands whole after it."""
    out = tmp_path / "out.jsonl"
    script = (
        "import sys\n"
        "from tests.test_output import _response\n"
        "from artist_bio_gen.core.output import append_jsonl_response\n"
        "append_jsonl_response(_response(2), sys.argv[1], 'p')\n"
    )
    writer = JsonlWriter(out, hold_lock=True)
    writer.append_line(encode_line(_response(1), "p"))
    other = subprocess.Popen(
        [sys.executable, "-c", script, str(out)], cwd=Path(__file__).parent.parent
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=2)  # blocked on the lock the writer holds
        assert [r["response_id"] for r in read_jsonl(out)] == ["resp_1"]
    finally:
        writer.close()
    assert other.wait(timeout=30) == 0
    assert [r["response_id"] for r in read_jsonl(out)] == ["resp_1", "resp_2"]


def test_a_held_writer_whose_undo_failed_cuts_the_torn_tail_before_its_next_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer holding the lock trusts the size it knows, except after a failed write whose
    undo failed too: then it looks again, so its next line never lands after a torn one."""
    import errno

    import artist_bio_gen.core.jsonl as jsonl

    out = tmp_path / "out.jsonl"
    real_write, real_ftruncate = os.write, os.ftruncate
    with JsonlWriter(out, hold_lock=True) as writer:
        writer.append_line(encode_line(_response(1), "p"))

        def half_then_enospc(fd: int, data: bytes) -> int:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def refuse(fd: int, length: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(jsonl.os, "write", half_then_enospc)
        monkeypatch.setattr(jsonl.os, "ftruncate", refuse)
        with pytest.raises(OutputWriteError):
            writer.append_line(encode_line(_response(2), "p"))
        monkeypatch.setattr(jsonl.os, "write", real_write)
        monkeypatch.setattr(jsonl.os, "ftruncate", real_ftruncate)
        writer.append_line(encode_line(_response(3), "p"))
        assert writer.repaired_bytes > 0
    assert [r["response_id"] for r in read_jsonl(out)] == ["resp_1", "resp_3"]
