"""Test-only fault injection: make ``artist-bio-gen`` SIGKILL itself at an exact moment.

Python imports ``sitecustomize`` at startup when this directory is on ``PYTHONPATH``. The
crash tests put it first for the CLI subprocess; production code has no fault flag at all.
Without ``ABG_FAULT`` in the environment this module does nothing.

``ABG_FAULT=<point>:<N>`` chooses where the process dies (N counts from 1):

* ``after_commit:N``  right after the Nth successful ``BioStore.commit`` returns, before the
  worker appends its JSONL line (committed, not appended);
* ``mid_write:N``     during the Nth ``os.write`` to the output file: half the bytes are
  written with the real ``os.write``, then the process dies (a torn last line);
* ``before_fsync:N``  at the first ``os.fsync`` of the output file after its Nth write (the
  line is whole in the page cache but was never fsynced);
* ``after_batch_create:N``  right after the Nth ``BatchApi.create`` returns (batch mode: the
  batch exists at the API, its id is not recorded yet).

``ABG_FAULT_FILE`` names the output file whose writes are counted (default ``out.jsonl``,
compared by file name, so ``out.failures.jsonl`` and the other side files never count).
``ABG_FAULT_REPORT``, when set, is a path where a JSON object ``{"point", "n", "artist_id",
"artist_name"}`` naming the artist being handled is written (and fsynced) just before dying.

The patches are applied lazily by an import hook when the module concerned is first
imported, so this file imports nothing from ``artist_bio_gen`` (and nothing else that a
plain interpreter start would not) and changes nothing about import order.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

POINTS = ("after_commit", "mid_write", "before_fsync", "after_batch_create")
_STORE_MODULE = "artist_bio_gen.database.store"
_OUTPUT_MODULE = "artist_bio_gen.core.jsonl"
_BATCHES_MODULE = "artist_bio_gen.api.batches"

_real_write = os.write
_real_fsync = os.fsync


def _die(point: str, n: int, artist_id: str | None, artist_name: str | None = None) -> None:
    """Write the report (if asked for), then SIGKILL this process: no cleanup of any kind."""
    report = os.environ.get("ABG_FAULT_REPORT")
    if report:
        payload = {"point": point, "n": n, "artist_id": artist_id, "artist_name": artist_name}
        fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _real_write(fd, json.dumps(payload).encode("utf-8"))
        _real_fsync(fd)
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    threading.Event().wait()  # SIGKILL is asynchronous in theory; never return to the caller


def _last_line_start(data: bytes) -> int:
    """Offset of the last line in ``data`` (a write may carry several whole lines: the
    writer's group commit joins lines that are ready at the same moment)."""
    return data.rstrip(b"\n").rfind(b"\n") + 1


def _line_artist_id(data: bytes) -> str | None:
    """The ``artist_id`` of the last encoded JSONL line of ``data`` (None if unparseable)."""
    try:
        return str(json.loads(data[_last_line_start(data) :])["artist_id"])
    except (ValueError, KeyError, TypeError):
        return None


class _Counter:
    """A thread-safe counter that says when the Nth event happens."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._count = 0
        self._lock = threading.Lock()

    def hit(self) -> bool:
        """Count one event; True exactly for the ``target``-th."""
        with self._lock:
            self._count += 1
            return self._count == self.target


def _patch_store(module: ModuleType, n: int) -> None:
    """after_commit: die right after the Nth successful commit returns (alone or in a
    group)."""
    store_class = module.BioStore
    original = store_class.commit
    counter = _Counter(n)

    def commit(self: Any, row: Any, *args: Any, **kwargs: Any) -> Any:
        committed = original(self, row, *args, **kwargs)
        if counter.hit():
            _die("after_commit", n, committed.artist_id, committed.artist_name)
        return committed

    original_group = store_class.commit_group

    def commit_group(self: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        # A group counts one commit per bio; dying after the Nth leaves the whole group
        # committed and none of its lines appended, as a kill between the two would.
        group = original_group(self, rows, *args, **kwargs)
        for committed in group:
            if counter.hit():
                _die("after_commit", n, committed.artist_id, committed.artist_name)
        return group

    store_class.commit = commit
    store_class.commit_group = commit_group


def _patch_batches(module: ModuleType, n: int) -> None:
    """after_batch_create: die right after the Nth batch was created, before its id is
    recorded (the report names the batch id as ``artist_id``)."""
    api_class = module.BatchApi
    original = api_class.create
    counter = _Counter(n)

    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        info = original(self, *args, **kwargs)
        if counter.hit():
            _die("after_batch_create", n, info.id)
        return info

    api_class.create = create


class _OsProxy:
    """Stands in for ``os`` inside the JSONL writer module; only write and fsync are changed."""

    def __init__(self, point: str, n: int, file_name: str) -> None:
        self._point = point
        self._n = n
        self._file_name = file_name
        self._writes = _Counter(n)
        self._armed_fd: int | None = None  # before_fsync: the Nth line's descriptor
        self._armed_line = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _is_target(self, fd: int) -> bool:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return os.path.basename(target) == self._file_name

    def write(self, fd: int, data: bytes) -> int:
        if not self._is_target(fd) or not self._writes.hit():
            return _real_write(fd, data)
        line = bytes(data)
        if self._point == "mid_write":
            # Cut inside the last line, so the file ends in a torn line whatever the batch.
            start = _last_line_start(line)
            _real_write(fd, line[: start + max(1, (len(line) - start) // 2)])
            _die(self._point, self._n, _line_artist_id(line))
        written = _real_write(fd, line)
        self._armed_fd, self._armed_line = fd, line
        return written

    def fsync(self, fd: int) -> None:
        if self._armed_fd is not None and fd == self._armed_fd:
            _die(self._point, self._n, _line_artist_id(self._armed_line))
        _real_fsync(fd)


def _patch_output(module: ModuleType, point: str, n: int) -> None:
    """mid_write / before_fsync: route the output module's ``os`` through ``_OsProxy``."""
    if getattr(module, "os", None) is not os:
        raise RuntimeError(f"{_OUTPUT_MODULE} no longer uses 'import os'; update the fault shim")
    module.os = _OsProxy(point, n, os.environ.get("ABG_FAULT_FILE", "out.jsonl"))


class _PatchingLoader(Loader):
    """Runs the real loader, then the patch, for one module."""

    def __init__(self, loader: Loader, patch: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PatchOnImport(MetaPathFinder):
    """Finds modules through the other finders and wraps the loader of the patched ones."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]) -> None:
        self._patches = patches

    def find_spec(
        self, fullname: str, path: Any, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        patch = self._patches.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


def _parse(spec: str) -> tuple[str, int]:
    point, _, count = spec.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise SystemExit(f"faultshim: bad ABG_FAULT {spec!r}; expected <{'|'.join(POINTS)}>:<N>")
    return point, int(count)


def _install(spec: str) -> None:
    point, n = _parse(spec)
    if point == "after_commit":
        patches = {_STORE_MODULE: lambda module: _patch_store(module, n)}
    elif point == "after_batch_create":
        patches = {_BATCHES_MODULE: lambda module: _patch_batches(module, n)}
    else:
        patches = {_OUTPUT_MODULE: lambda module: _patch_output(module, point, n)}
    sys.meta_path.insert(0, _PatchOnImport(patches))


if os.environ.get("ABG_FAULT"):
    _install(os.environ["ABG_FAULT"])
