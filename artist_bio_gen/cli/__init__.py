"""The command line."""

from .main import create_argument_parser, main

__all__ = ["create_argument_parser", "main"]
