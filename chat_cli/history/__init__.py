"""The history of every exchange: a SQLite database, `chat logs` and `/search`."""
