"""The pipeline: read, process, commit, append, resume and recovery.

The names below are the legacy public API of this package.
"""

from .legacy import (
    append_jsonl_response,
    get_processed_artist_ids,
    initialize_jsonl_output,
    parse_input_file,
    write_jsonl_output,
)
from .processor import process_artists_concurrent

__all__ = [
    "append_jsonl_response",
    "get_processed_artist_ids",
    "initialize_jsonl_output",
    "parse_input_file",
    "process_artists_concurrent",
    "write_jsonl_output",
]
