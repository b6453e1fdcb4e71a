"""STT: speech to text of the job's input audio (services/stt)."""

from __future__ import annotations

from control.db.models import JobType
from control.kinds.base import JobKind, UserDefaults
from control.validate import enum_field, language_field, text_field
from voxmesh.v1 import jobs_pb2


class Stt(JobKind[jobs_pb2.SttParams]):
    job_type = JobType.STT
    field = "stt"
    params_type = jobs_pb2.SttParams
    input_meaning = "the audio to transcribe"

    def fill(self, out: jobs_pb2.SttParams, defaults: UserDefaults) -> None:
        out.language = language_field(out.language, "stt.language")
        enum_field(jobs_pb2.SttTask, out.task, "stt.task")
        out.task = out.task or jobs_pb2.STT_TASK_TRANSCRIBE
        out.initial_prompt = text_field(
            out.initial_prompt, "stt.initial_prompt", max_len=1000, multiline=True
        )
