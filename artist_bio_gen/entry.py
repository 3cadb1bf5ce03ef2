"""The ``artist-bio-gen`` command's entry point (and ``python -m artist_bio_gen``'s).

Before anything else the command re-executes itself once with glibc's per-thread malloc
caches turned off (``GLIBC_TUNABLES=glibc.malloc.tcache_count=0``): with many worker threads
they make a long run's memory creep (``utils/memory.py`` says why and what it saves), and
glibc reads tunables only when a process starts. The re-execution keeps the pid, the command
line, the environment otherwise and every open descriptor, and costs one interpreter start
(about 20 ms) because nothing of the tool is loaded before it: this module imports only the
standard library, and the package's ``__init__`` loads its public names on first use.

A user's own ``tcache_count`` in ``GLIBC_TUNABLES`` is kept as it is (``tcache_count=7`` is
glibc's default: the way to run without the tuning). ``artist_bio_gen.main``, the legacy
entry that scripts call from their own code, never re-executes: that would run the caller's
script again from its start.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import NoReturn

#: The glibc tunable the command runs with.
TCACHE_TUNABLE = "glibc.malloc.tcache_count"
_TCACHE_OFF = f"{TCACHE_TUNABLE}=0"


def tuned_malloc_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with glibc's per-thread caches turned off in ``GLIBC_TUNABLES`` (its other
    tunables kept), or None when it sets ``tcache_count`` already: this process runs with
    it, or the user chose a value of their own."""
    current = environ.get("GLIBC_TUNABLES", "")
    if any(item.split("=", 1)[0] == TCACHE_TUNABLE for item in current.split(":")):
        return None
    tuned = dict(environ)
    tuned["GLIBC_TUNABLES"] = f"{current}:{_TCACHE_OFF}" if current else _TCACHE_OFF
    return tuned


def _uses_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):  # no such name: not glibc
        return False


def reexec_with_tuned_malloc() -> None:
    """Replace this process with itself run in ``tuned_malloc_environment``, on glibc and
    when that differs from the current environment; returns only when it does not apply or
    the exec fails (the command then runs untuned rather than not at all)."""
    if not _uses_glibc():
        return
    environ = tuned_malloc_environment(os.environ)
    if environ is None:
        return
    # The interpreter's full path as argv[0]: it finds its virtual environment from it.
    argv = [sys.executable, *sys.orig_argv[1:]]
    try:
        os.execve(sys.executable, argv, environ)
    except OSError:
        return


def main() -> NoReturn:
    """Run the command line in ``sys.argv`` (see the module docstring)."""
    reexec_with_tuned_malloc()
    from .cli.main import main as run_command_line

    run_command_line()
