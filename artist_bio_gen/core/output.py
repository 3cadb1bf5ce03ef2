"""Legacy import path of the JSONL output functions (they live in ``core/legacy.py``).

The writer the tool uses is ``core/jsonl.py``.
"""

from .legacy import (
    append_jsonl_response,
    get_processed_artist_ids,
    initialize_jsonl_output,
    write_jsonl_output,
)

__all__ = [
    "append_jsonl_response",
    "get_processed_artist_ids",
    "initialize_jsonl_output",
    "write_jsonl_output",
]
