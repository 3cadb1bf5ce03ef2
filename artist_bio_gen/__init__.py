"""artist-bio-gen: artist biographies from the OpenAI Responses API, committed to PostgreSQL
and mirrored, line by committed line, into a crash-safe JSONL file.

The names below are the legacy public API; existing scripts import them from here.
"""

from .api.call import call_openai_api
from .api.client import create_openai_client
from .cli.main import create_argument_parser, main
from .core.legacy import (
    append_jsonl_response,
    get_processed_artist_ids,
    initialize_jsonl_output,
    parse_input_file,
    update_artist_bio,
    validate_database_url,
    write_jsonl_output,
)
from .core.processor import process_artists_concurrent
from .database.connection import create_db_connection_pool
from .exit_codes import (
    EXIT_API_FAILURES,
    EXIT_CONFIG_ERROR,
    EXIT_INPUT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_SUCCESS,
    EXIT_UNEXPECTED_ERROR,
)
from .models import (
    ApiResponse,
    ArtistData,
    DatabaseConfig,
    DatabaseResult,
    ParseResult,
    ProcessingStats,
)
from .utils.logging import setup_logging

__version__ = "2.0.0"

__all__ = [
    "EXIT_API_FAILURES",
    "EXIT_CONFIG_ERROR",
    "EXIT_INPUT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_SUCCESS",
    "EXIT_UNEXPECTED_ERROR",
    "ApiResponse",
    "ArtistData",
    "DatabaseConfig",
    "DatabaseResult",
    "ParseResult",
    "ProcessingStats",
    "append_jsonl_response",
    "call_openai_api",
    "create_argument_parser",
    "create_db_connection_pool",
    "create_openai_client",
    "get_processed_artist_ids",
    "initialize_jsonl_output",
    "main",
    "parse_input_file",
    "process_artists_concurrent",
    "setup_logging",
    "update_artist_bio",
    "validate_database_url",
    "write_jsonl_output",
]
