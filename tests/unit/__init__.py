"""Fast tests: no PostgreSQL, no server process, no network channel."""
