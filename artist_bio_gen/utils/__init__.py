"""Small helpers: text cleaning, compact id sets, logging."""
