"""STT: speech to text of the job's input audio (services/stt)."""

from __future__ import annotations

from control.db.models import JobType
from control.kinds.base import JobKind, UserDefaults
from control.validate import (
    enum_field,
    language_field,
    number_range,
    speaker_count,
    text_field,
)
from voxmesh.errors import InvalidArgument
from voxmesh.speech.languages import NoModel, route_stt
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
        out.model = text_field(out.model, "stt.model", max_len=200)
        out.temperature = number_range(out.temperature, "stt.temperature", low=0.0, high=1.0)
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(out, name)
            if value and not out.diarize:
                raise InvalidArgument(f"stt.{name} needs stt.diarize", field=f"stt.{name}")
            speaker_count(value, f"stt.{name}")
        if out.num_speakers and (out.min_speakers or out.max_speakers):
            raise InvalidArgument(
                "give stt.num_speakers or stt.min_speakers/max_speakers, not both",
                field="stt.num_speakers",
            )
        if out.min_speakers and out.max_speakers and out.min_speakers > out.max_speakers:
            raise InvalidArgument(
                f"stt.min_speakers ({out.min_speakers}) is above stt.max_speakers "
                f"({out.max_speakers})",
                field="stt.min_speakers",
            )
        if out.diarize:
            out.word_timestamps = True  # speakers are assigned word by word
        task = "translate" if out.task == jobs_pb2.STT_TASK_TRANSLATE else "transcribe"
        try:  # refused now if no connected worker's model can do it, not after queueing
            route_stt(defaults.stt_models, out.language, task, out.model)
        except NoModel as e:
            field = "stt.model" if out.model and "no STT model" in str(e) else (
                "stt.task" if task == "translate" and "translation" in str(e) else "stt.language"
            )  # fmt: skip
            raise InvalidArgument(f"{field}: {e}", field=field) from None
