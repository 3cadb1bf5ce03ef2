"""Which job a run works on: a new one, the recorded one (``--resume``), or none (refused).

Decided under the run lock and before anything is written, except that ``--overwrite``
moves the old job's files aside (renamed, never deleted). A new job's manifest is only
built here; the runner writes it once the checks that can refuse the run have passed.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass

from ..config import Config
from ..errors import UsageError
from ..jobfiles import JobPaths, Manifest, read_manifest
from .jsonl import last_complete_size, move_aside

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobStart:
    """The job a run works on; ``new`` when its manifest is still to be written."""

    manifest: Manifest
    new: bool


def new_job_id() -> str:
    """A fresh job id."""
    return str(uuid.uuid4())


def new_manifest(config: Config, job_id: str, legacy_prefix: int = 0) -> Manifest:
    """A manifest for a new job started with ``config``."""
    settings = config.job_settings
    return Manifest(
        job_id=job_id,
        input=str(config.input_path.resolve()),
        settings=settings,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        legacy_prefix=legacy_prefix,
        instructions=config.prompt.instructions if settings.instructions_sha256 else None,
    )


def decide_job(config: Config, paths: JobPaths) -> JobStart:
    """New job, the recorded one, or refuse; call with the run lock held."""
    manifest = read_manifest(paths)
    has_lines = paths.output.exists() and paths.output.stat().st_size > 0
    if config.resume:
        return _resume(config, paths, manifest, has_lines)
    if manifest is not None or has_lines:
        if not config.overwrite:
            raise UsageError(_existing_output_message(paths, manifest))
        if manifest is not None and manifest.settings.mode == "batch":
            logger.warning(
                "job %s is a batch job: batches it has open keep running on OpenAI (and are "
                "billed when they complete); 'artist-bio-gen batch cancel' before --overwrite "
                "stops them",
                manifest.job_id,
            )
        for path in (paths.output, paths.manifest, paths.failures):
            if path.exists():
                move_aside(path)
    return JobStart(new_manifest(config, new_job_id()), new=True)


def _resume(
    config: Config, paths: JobPaths, manifest: Manifest | None, has_lines: bool
) -> JobStart:
    if (manifest.job_id if manifest else None) != config.resumed_job:
        # The settings were resolved against another manifest (or none) than the one found
        # under the lock: another run replaced the job in between.
        raise UsageError(
            f"The job of {paths.output} changed while this run was starting (another run "
            "with --overwrite?); run the command again."
        )
    if manifest is not None:
        logger.info("resuming job %s (%s)", manifest.job_id, paths.output)
        return JobStart(manifest, new=False)
    if has_lines:
        logger.info("%s has no job manifest: adopting it as a legacy output", paths.output)
        # The legacy lines stay as they are; a torn last line is cut when the output opens.
        prefix = _complete_size(paths)
        return JobStart(new_manifest(config, new_job_id(), legacy_prefix=prefix), new=True)
    logger.info("nothing to resume at %s; starting a new job", paths.output)
    return JobStart(new_manifest(config, new_job_id()), new=True)


def _complete_size(paths: JobPaths) -> int:
    fd = os.open(paths.output, os.O_RDONLY)
    try:
        return last_complete_size(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _existing_output_message(paths: JobPaths, manifest: Manifest | None) -> str:
    what = f"belongs to job {manifest.job_id}" if manifest else "already holds lines"
    return (
        f"{paths.output} {what}; pass --resume to continue it, --overwrite to move it aside "
        "and start a new job, or choose another --output."
    )
