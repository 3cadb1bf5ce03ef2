"""``python -m artist_bio_gen``."""

from .entry import main

main()
