"""Alembic environment: runs migrations over a synchronous psycopg 3 connection."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from control.db.models import Base

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK = 0x766F786D6D6967  # "voxmmig"


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            # Control-plane replicas starting together migrate one at a time: the others wait
            # here, then find the schema current (the version is read after the lock).
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
