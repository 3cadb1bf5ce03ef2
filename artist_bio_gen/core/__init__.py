"""The pipeline: parse, process, output, resume and recovery."""

from .output import (
    append_jsonl_response,
    get_processed_artist_ids,
    initialize_jsonl_output,
    write_jsonl_output,
)
from .parser import parse_input_file
from .processor import process_artists_concurrent

__all__ = [
    "append_jsonl_response",
    "get_processed_artist_ids",
    "initialize_jsonl_output",
    "parse_input_file",
    "process_artists_concurrent",
    "write_jsonl_output",
]
