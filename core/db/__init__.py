"""The database: schema, connection URLs and migrations."""
