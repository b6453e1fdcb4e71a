"""Garbage collection in a long-running service: what start-up made (imported libraries,
SQLAlchemy's mappers, protobuf descriptors, a worker's models) lives as long as the process,
so once the service is up it is moved out of the collector's way (`gc.freeze`).

Without that, every full collection walks all of it: about 180,000 objects in the control
plane, about 0.1 s in which its event loop serves no RPC, watcher or worker event. Full
collections come whenever enough new objects have outlived younger collections, at moments
no request chooses. After the freeze, one walks only what was made since (tens of ms)."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect start-up's garbage, then leave every object alive now out of later collections
    (one that becomes garbage in a reference cycle is then never freed: start-up's objects are
    meant to live as long as the process). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
