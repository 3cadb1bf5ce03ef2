"""``python -m artist_bio_gen``."""

from .cli.main import main

main()
