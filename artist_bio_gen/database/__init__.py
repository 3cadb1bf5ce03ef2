"""PostgreSQL: the connection pool, the user's table and the ledger."""
