"""Process exit codes: the legacy ones keep their meaning, new ones are added after them.

An operator's cron wrapper branches on these, so they are a contract: ``--help`` (the
epilog in ``cli/main.py``) and the README's exit-code table list every one with its number
(``tests/test_docs.py`` checks both).
"""

EXIT_SUCCESS = 0
#: The input file is missing or unreadable.
EXIT_INPUT_FILE_ERROR = 1
#: A bad path or a bad combination of flags (argparse usage errors use 2 too).
EXIT_INPUT_ERROR = 2
#: Configuration is wrong: API key, prompt, database URL, table or column.
EXIT_CONFIG_ERROR = 3
#: The run finished but some artists failed; they are listed in the failures file.
EXIT_API_FAILURES = 4
#: The run stopped early because something outside the tool broke (quota exhausted,
#: database gone, disk full); fix it and run ``--resume``.
EXIT_RUN_ABORTED = 5
#: The JSONL holds lines the database does not: a human has to look (see ``verify``).
EXIT_OUT_OF_SYNC = 6
#: The run stopped at a limit it was given or met: ``--daily-limit`` (today's requests are
#: spent), ``--max-cost``, ``--limit``, or a rate-limit wait longer than ``--pause-duration``.
#: Nothing is wrong: ``--resume`` continues (tomorrow, for the daily limit).
EXIT_LIMIT_REACHED = 7
EXIT_UNEXPECTED_ERROR = 10
#: Another run holds this job's lock (EX_TEMPFAIL: try again later).
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130

#: Each code in a few words: the summary's last line, ``--summary-json`` and the metrics file
#: show it next to the number (the README's table says what to do after each).
MEANINGS: dict[int, str] = {
    EXIT_SUCCESS: "done",
    EXIT_INPUT_FILE_ERROR: "input file missing or unreadable",
    EXIT_INPUT_ERROR: "bad path or options",
    EXIT_CONFIG_ERROR: "configuration error (key, prompt, database, table)",
    EXIT_API_FAILURES: "some artists failed; --resume retries them",
    EXIT_RUN_ABORTED: "stopped early; fix the cause, then --resume",
    EXIT_OUT_OF_SYNC: "JSONL and database disagree; run verify",
    EXIT_LIMIT_REACHED: "stopped at a limit; --resume continues",
    EXIT_UNEXPECTED_ERROR: "unexpected error; rerun with --verbose",
    EXIT_LOCKED: "another run holds this job",
    EXIT_INTERRUPTED: "interrupted; --resume continues",
}


def meaning(code: int) -> str:
    """What exit code ``code`` means, in a few words."""
    return MEANINGS.get(code, "unknown exit code")
