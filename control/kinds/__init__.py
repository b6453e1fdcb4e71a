"""Job kinds: everything the control plane knows about one job type lives in that type's module
here, and nowhere else.

    stt.py  tts.py  voice_cloning.py  dubbing.py  ai_stories.py

Each module defines one `JobKind` subclass: its typed params message, validation and the
defaults a job is stored with, which input file it takes, what its dispatch carries (other files,
a saved voice's profile) and what its completion does (e.g. saving a cloned voice). The API,
dispatcher and ingester only call `kind_of(job.type)` / `kind_for_field(...)`; none of them names
a job type.

Adding a job type: a params message in protos/voxmesh/v1/jobs.proto (in the `params` oneofs of
Job, CreateJobRequest, UpdateJobRequest, JobDispatch and ShardTask), a JobType value (proto enum
and an Alembic migration adding it to the database enum), a module here registered in `KINDS`,
and a service under services/ whose Worker pulls `worker-<field>`.
"""

from __future__ import annotations

from control.db.models import JobType
from control.kinds.ai_stories import AiStories
from control.kinds.base import JobKind, UserDefaults
from control.kinds.dubbing import Dubbing
from control.kinds.stt import Stt
from control.kinds.tts import Tts
from control.kinds.voice_cloning import VoiceCloning
from voxmesh.errors import InvalidArgument

KINDS: dict[JobType, JobKind] = {
    kind.job_type: kind for kind in (Stt(), Tts(), VoiceCloning(), Dubbing(), AiStories())
}
BY_FIELD: dict[str, JobKind] = {kind.field: kind for kind in KINDS.values()}
FIELDS: tuple[str, ...] = tuple(BY_FIELD)
"""The params oneof field of every kind: also its NATS subject suffix and worker consumer."""


def kind_of(job_type: JobType) -> JobKind:
    return KINDS[job_type]


def kind_for_field(field: str | None) -> JobKind:
    """The kind whose params oneof field is `field`; InvalidArgument if none is set."""
    if field is None or field not in BY_FIELD:
        raise InvalidArgument(
            f"set the parameters of one job type: one of {', '.join(sorted(BY_FIELD))}",
            field="params",
        )
    return BY_FIELD[field]


__all__ = ["BY_FIELD", "FIELDS", "KINDS", "JobKind", "UserDefaults", "kind_for_field", "kind_of"]
