"""The control plane's database: models (`models`), engine and sessions (`session`), the
embedded PostgreSQL (`embedded`) and Alembic migrations (`migrations/`, run by `migrate`)."""
