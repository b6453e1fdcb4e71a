"""`voxmesh-control`: run the control plane and manage its database.

voxmesh-control serve                 run the gRPC server (embedded PostgreSQL by default)
voxmesh-control migrate               apply database migrations
voxmesh-control sample-data [--clear] load the demo users, projects, jobs and settings
voxmesh-control create-user NAME --role admin   add a user (password read from stdin or prompted)
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from control.config import ControlSettings
from control.db.models import UserRole
from control.kinds import FIELDS
from control.server import ConfigurationError, prepare_database, serve
from voxmesh import eventloop
from voxmesh.errors import ApiError
from voxmesh.observability import setup_logging


def _sessions(url: str):  # type: ignore[no-untyped-def]
    from control.db.session import create_engine, create_sessionmaker

    engine = create_engine(url, pool_size=2)
    return engine, create_sessionmaker(engine)


async def _sample_data(settings: ControlSettings, url: str, reset: bool) -> None:
    """Files go to the shared store in NATS, where workers find them: the running platform's
    NATS (NATS_URL, or the embedded one if `make run` is up), else a temporary embedded one."""
    from control import sample_data
    from voxmesh import mesh
    from voxmesh.blobs import NatsBlobStore
    from voxmesh.nats_embedded import EmbeddedNats

    started = None
    embedded = EmbeddedNats(
        settings.data_dir / "nats", port=settings.nats_port, worker_types=FIELDS
    )
    nats_url = settings.nats_url or embedded.url
    if not settings.nats_url and not embedded.accepting():
        started = embedded.start()
    nc = await mesh.connect(nats_url, "voxmesh-sample-data")
    engine, sessions = _sessions(url)
    try:
        js = nc.jetstream()
        await mesh.ensure(js, settings.mesh, FIELDS)
        blobs = await NatsBlobStore.open(js, mesh.FILES_BUCKET, reseal=True)
        async with sessions() as session:
            if reset:
                await sample_data.clear(session)
            counts = await sample_data.load(session, blobs, sample_data.sample_speech())
            await session.commit()
    finally:
        await engine.dispose()
        await nc.close()
        if started is not None:
            started.stop()
    print(("Reset and loaded" if reset else "Loaded") + " sample data: "
          + ", ".join(f"{n} {what}" for what, n in counts.items()))  # fmt: skip
    print(sample_data.credentials_text())


async def _create_user(url: str, username: str, role: UserRole, password: str) -> None:
    from control import accounts

    engine, sessions = _sessions(url)
    try:
        async with sessions() as session:
            user = await accounts.create_user(
                session, username=username, password=password, role=role
            )
            await session.commit()
            print(f"created {role.value.lower()} {user.username} ({user.id})")
    finally:
        await engine.dispose()


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise SystemExit("passwords differ")
    return first


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="voxmesh-control", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the control-plane gRPC server")
    p_serve.add_argument("--port", type=int, help="override VOXMESH_PORT")
    p_serve.add_argument("--host", help="override VOXMESH_HOST")
    sub.add_parser("migrate", help="apply database migrations")
    p_sample = sub.add_parser("sample-data", help="load demo data")
    p_sample.add_argument("--clear", action="store_true", help="delete the sample data first")
    p_user = sub.add_parser("create-user", help="add a user; password from stdin or a prompt")
    p_user.add_argument("username")
    p_user.add_argument("--role", choices=[r.value.lower() for r in UserRole], required=True)
    args = parser.parse_args(argv)

    settings = ControlSettings()
    setup_logging("control", settings.log_level)
    try:
        if args.command == "serve":
            if args.port is not None:
                settings.port = args.port
            if args.host:
                settings.host = args.host
            eventloop.run(serve(settings))
            return
        url, _pg = prepare_database(settings)
        if args.command == "sample-data":
            asyncio.run(_sample_data(settings, url, args.clear))
        elif args.command == "create-user":
            asyncio.run(
                _create_user(url, args.username, UserRole(args.role.upper()), _read_password())
            )
    except (ConfigurationError, ApiError) as e:
        raise SystemExit(f"voxmesh-control: {e}") from None


if __name__ == "__main__":
    main()
