"""What the database itself enforces, tested with raw SQL against the migrated schema, and
that the Alembic migrations are the schema: they match the models exactly and run both ways."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from control.db import migrate
from control.db.models import Base
from control.db.session import normalize_url


@pytest.fixture
def db(database_url: str):  # type: ignore[no-untyped-def]
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def _user(conn: psycopg.Connection, role: str = "EDITOR") -> uuid.UUID:
    uid = uuid.uuid4()
    conn.execute(
        "INSERT INTO users (id, username, password_hash) VALUES (%s, %s, 'x')",
        (uid, f"u{uid.hex[:10]}"),
    )
    conn.execute("INSERT INTO profiles (user_id, role) VALUES (%s, %s)", (uid, role))
    return uid


def _project(conn: psycopg.Connection, owner: uuid.UUID) -> uuid.UUID:
    pid = uuid.uuid4()
    conn.execute(
        "INSERT INTO projects (id, name, owner_id) VALUES (%s, %s, %s)", (pid, pid.hex, owner)
    )
    return pid


def _job(
    conn: psycopg.Connection, project: uuid.UUID, owner: uuid.UUID, **cols: object
) -> uuid.UUID:
    jid = uuid.uuid4()
    values = {"id": jid, "project_id": project, "created_by": owner, "type": "TTS", **cols}
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", list(values.values()))
    return jid


def test_profile_and_result_are_one_to_one(db: psycopg.Connection) -> None:
    uid = _user(db)
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("INSERT INTO profiles (user_id, role) VALUES (%s, 'VIEWER')", (uid,))
    job = _job(db, _project(db, uid), uid)
    db.execute("INSERT INTO job_results (job_id, finished_at) VALUES (%s, now())", (job,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("INSERT INTO job_results (job_id, finished_at) VALUES (%s, now())", (job,))


def test_foreign_keys(db: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        db.execute("INSERT INTO profiles (user_id, role) VALUES (%s, 'ADMIN')", (uuid.uuid4(),))
    uid = _user(db)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        _job(db, uuid.uuid4(), uid)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        db.execute(
            "INSERT INTO job_results (job_id, finished_at) VALUES (%s, now())", (uuid.uuid4(),)
        )
    _project(db, uid)
    with pytest.raises(psycopg.errors.RestrictViolation):  # a user who owns a project stays
        db.execute("DELETE FROM users WHERE id = %s", (uid,))


def test_settings_unique_per_user_and_key_and_per_global_key(db: psycopg.Connection) -> None:
    uid = _user(db)
    db.execute(
        "INSERT INTO settings (id, key, value, user_id) VALUES (gen_random_uuid(), 'preferred_voice', '\"a\"', %s)",
        (uid,),
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(
            "INSERT INTO settings (id, key, value, user_id) VALUES (gen_random_uuid(), 'preferred_voice', '\"b\"', %s)",
            (uid,),
        )
    db.execute(
        "INSERT INTO settings (id, key, value) VALUES (gen_random_uuid(), 'max_file_size_mb', '100')"
    )
    with pytest.raises(psycopg.errors.UniqueViolation):  # NULL user ids do not make two globals
        db.execute(
            "INSERT INTO settings (id, key, value) VALUES (gen_random_uuid(), 'max_file_size_mb', '200')"
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO settings (id, key, value) VALUES (gen_random_uuid(), 'Bad Key', '1')"
        )


def test_progress_range_and_enums(db: psycopg.Connection) -> None:
    uid = _user(db)
    project = _project(db, uid)
    for bad in (-1, 101):
        with pytest.raises(psycopg.errors.CheckViolation):
            _job(db, project, uid, progress=bad)
    _job(db, project, uid, progress=100)
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        _job(db, project, uid, type="KARAOKE")
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        _job(db, project, uid, status="PAUSED")
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        _user(db, role="SUPERUSER")
    types = db.execute("SELECT enum_range(NULL::job_type)::text").fetchone()
    assert types == ("{STT,TTS,VOICE_CLONING,DUBBING,AI_STORIES}",)
    statuses = db.execute("SELECT enum_range(NULL::job_status)::text").fetchone()
    assert statuses == ("{PENDING,RUNNING,COMPLETED,FAILED,CANCELLED}",)


def test_usernames_are_unique_regardless_of_case(db: psycopg.Connection) -> None:
    db.execute(
        "INSERT INTO users (id, username, password_hash) VALUES (gen_random_uuid(), 'Alice', 'x')"
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(
            "INSERT INTO users (id, username, password_hash) VALUES (gen_random_uuid(), 'alice', 'x')"
        )


def test_migrations_match_the_models(database_url: str) -> None:
    engine = create_engine(normalize_url(database_url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; write a migration: {diff}"


def test_migrations_downgrade_and_upgrade(database_url: str) -> None:
    migrate.downgrade(database_url, "base")
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> 'alembic_version'"
        ).fetchone()
        assert tables == (0,)
    migrate.upgrade(database_url)
    with psycopg.connect(database_url) as conn:
        head = ScriptDirectory.from_config(migrate.alembic_config(database_url)).get_current_head()
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (head,)


def test_replicas_starting_together_migrate_one_at_a_time(database_url: str) -> None:
    """Two control-plane replicas starting at once on an empty database both come up: one
    migrates, the other waits for its lock and finds the schema current."""
    migrate.downgrade(database_url, "base")
    code = "import sys; from control.db import migrate; migrate.upgrade(sys.argv[1])"
    replicas = [
        subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    for replica in replicas:
        _, err = replica.communicate(timeout=120)
        assert replica.returncode == 0, err.decode()[-2000:]
    with psycopg.connect(database_url) as conn:
        head = ScriptDirectory.from_config(migrate.alembic_config(database_url)).get_current_head()
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]


async def test_a_pooled_connection_the_server_ended_is_replaced_before_use(
    database_url: str, db: psycopg.Connection
) -> None:
    """The pool hands out no connection PostgreSQL has ended (restarted, stopped, or ended the
    session), and finds that out without asking (no SELECT 1 round trip per checkout)."""
    from sqlalchemy import event, text

    from control.db.session import create_engine as create_async_engine

    engine = create_async_engine(database_url, pool_size=1)
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        async with engine.connect() as conn:
            first = await conn.scalar(text("SELECT pg_backend_pid()"))
        db.execute("SELECT pg_terminate_backend(%s, 5000)", (first,))  # and wait for its end
        async with engine.connect() as conn:  # the same pooled connection, ended meanwhile
            second = await conn.scalar(text("SELECT pg_backend_pid()"))
        assert second != first
        async with engine.connect() as conn:  # a live one is reused as it is
            assert await conn.scalar(text("SELECT pg_backend_pid()")) == second
        assert statements == ["SELECT pg_backend_pid()"] * 3  # nothing else was sent
    finally:
        await engine.dispose()
