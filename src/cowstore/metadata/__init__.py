"""The store's SQLite database: schema, migrations and transactions (tables belong to their owners)."""
