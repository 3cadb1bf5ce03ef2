"""Names of the files a job keeps beside its JSONL output.

Everything a job needs to resume lives next to the output, so ``--output X`` alone identifies
the job. For ``out.jsonl`` the side files are ``out.job.json``, ``out.failures.jsonl``,
``out.transactions.jsonl``, ``out.jsonl.lock`` and ``out.run.lock``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _stem(output: Path) -> str:
    # "out.jsonl" -> "out"; any other name keeps its full name so that "a.json" and "a.jsonl"
    # never share side files.
    return output.stem if output.suffix == ".jsonl" else output.name


@dataclass(frozen=True)
class JobPaths:
    """The output path and the side files derived from it."""

    output: Path

    def _side(self, suffix: str) -> Path:
        return self.output.with_name(_stem(self.output) + suffix)

    @property
    def append_lock(self) -> Path:
        """Lock taken around every append, shared by all processes writing the output."""
        return self.output.with_name(self.output.name + ".lock")

    @property
    def run_lock(self) -> Path:
        """Lock held for a whole run so that two runs never work on one job."""
        return self._side(".run.lock")

    @property
    def manifest(self) -> Path:
        """The job manifest (job id, input, settings)."""
        return self._side(".job.json")

    @property
    def failures(self) -> Path:
        """One JSON line per failed attempt (machine-readable, never the main JSONL)."""
        return self._side(".failures.jsonl")

    @property
    def transaction_log(self) -> Path:
        """Default place of the structured per-commit transaction log."""
        return self._side(".transactions.jsonl")
