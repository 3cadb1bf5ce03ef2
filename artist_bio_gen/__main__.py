"""``python -m artist_bio_gen``."""

import sys

from .cli.main import main

sys.exit(main())
