"""Legacy import path of ``parse_input_file`` (it lives in ``core/legacy.py``).

The streaming reader the tool uses is ``core/reader.py``.
"""

from .legacy import parse_input_file

__all__ = ["parse_input_file"]
