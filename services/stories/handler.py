"""The AI stories job handler: write (streaming the text to watchers as it comes), shape, then
narrate paragraph by paragraph with the TTS engines, with timestamps."""

from __future__ import annotations

import json
import time

import numpy as np

from services.stories.config import WorkerSettings
from services.stories.drafting import Draft, Writing, length_verdict, write_base, write_chat
from services.stories.writing import (
    clean_title,
    distinct_ngram_ratio,
    has_dialogue,
    missing_terms,
    premise_terms,
    runs,
    title_prompt,
)
from voxmesh import audio, roles
from voxmesh.speech import languages, voice_profile, voices
from voxmesh.speech import text as text_split
from voxmesh.speech.tts import EngineError, for_voice
from voxmesh.speech.writer import Endpoint, GeneratorError, chat, local_model, stream
from voxmesh.stages import Stages
from voxmesh.v1 import jobs_pb2
from voxmesh.worker import Handler, JobContext, JobFailed, Outcome, Output

PROGRESS = {
    "writing": (0, 60),
    "narrating title": (60, 62),
    "narrating": (62, 95),
    "encoding": (95, 100),
}


def make_handler(settings: WorkerSettings) -> Handler:
    config = settings.stories

    async def handle(ctx: JobContext) -> Outcome:
        p = ctx.params_as(jobs_pb2.AiStoriesParams)
        stages: Stages[None] = Stages(ctx, PROGRESS)
        premise = p.prompt.strip()
        target = p.target_words or 400
        language = p.language or "en"
        if languages.base(language) not in languages.STORY_LANGUAGES:
            raise JobFailed(
                f"stories in {language!r} are not available yet: the shipped writer and "
                "narration voice are English"
            )
        profile = ctx.saved_voice(p.voice)  # a voice the project saved: its base voice, converted
        try:
            voice = voices.resolve(profile.base_voice if profile else p.voice, "")
        except (KeyError, ValueError) as e:
            raise JobFailed(f"narrator voice: {e}") from None
        seed = p.seed or int(time.time()) % 2**31

        await stages.report("writing")
        writer_name = p.writer or config.writer
        if config.base_url:
            endpoint = Endpoint(
                config.base_url,
                config.api_key.get_secret_value() if config.api_key else None,
                config.model,
                config.chat,
            )
        else:
            try:
                model = await ctx.run_blocking(local_model, config.threads, writer_name)
            except GeneratorError as e:
                raise JobFailed(str(e)) from None
            endpoint = model.endpoint
        started = time.perf_counter()
        out = Writing(ctx, stages, target)
        terms = premise_terms(premise)
        best: Draft | None = None
        previous: Draft | None = None
        try:
            for draft_number in range(1, (config.drafts if endpoint.chat else 1) + 1):
                draft = await (write_chat if endpoint.chat else write_base)(
                    out, endpoint, config, premise, p.genre, p.audience, target,
                    seed + 1000 * (draft_number - 1), previous, bool(p.dialogue_voice),
                )  # fmt: skip
                draft.missing = missing_terms(" ".join(draft.story.paragraphs), terms)
                # With a dialogue voice, a story nobody speaks in has nothing for it to say.
                draft.no_dialogue = bool(p.dialogue_voice) and not has_dialogue(draft.story)
                if best is None or draft.rank() < best.rank():
                    best = draft
                previous = draft
                if (not draft.missing and not draft.no_dialogue) or not endpoint.chat:
                    break
                lacks = [f"never mentions {', '.join(draft.missing)}"] if draft.missing else []
                lacks += ["has no dialogue"] if draft.no_dialogue else []
                await ctx.log(f"draft {draft_number} {' and '.join(lacks)}: writing it again")
        except GeneratorError as e:
            raise JobFailed(str(e)) from None
        assert best is not None
        story, tokens = best.story, out.tokens
        writing_seconds = time.perf_counter() - started
        await out.flush()
        if not story.title:
            try:  # a short completion names the story
                named = ""
                async for piece in stream(
                    endpoint, title_prompt(" ".join(story.paragraphs)), max_tokens=16,
                    temperature=0.3, seed=seed, repeat_penalty=1.0, stop=['"', "\n"],
                ) if not endpoint.chat else chat(
                    endpoint, [{"role": "user", "content": "Give this story a title of 2 to 8 "
                               "words. Answer with the title only.\n\n"
                               + " ".join(story.paragraphs)[:3000]}],
                    max_tokens=20, temperature=0.3, seed=seed, repeat_penalty=1.0,
                ):  # fmt: skip
                    named += piece
            except GeneratorError as e:
                raise JobFailed(str(e)) from None
            story.title = clean_title(named, fallback=premise[:60].strip().capitalize())
        if story.words < 20:
            raise JobFailed("the model wrote too little to make a story; try another seed")
        length_note = length_verdict(story, target)
        if length_note:
            await ctx.log(length_note)
        await ctx.log(
            f"wrote {story.words} words in {writing_seconds:.1f} s ({tokens} tokens, "
            f"{best.number} draft(s) with {endpoint.model})"
        )

        dialogue = None
        if p.dialogue_voice:
            try:
                dialogue = voices.resolve(p.dialogue_voice, "")
            except (KeyError, ValueError) as e:
                raise JobFailed(f"dialogue voice: {e}") from None

        try:
            engine = await ctx.run_blocking(for_voice, voice, settings.tts)
            dialogue_engine = (
                await ctx.run_blocking(for_voice, dialogue, settings.tts) if dialogue else None
            )
        except EngineError as e:
            raise JobFailed(str(e)) from None
        rate = engine.sample_rate
        dialogue_lines = 0
        parts: list[np.ndarray] = []
        timeline = []
        position = 0.0
        narrate_started = time.perf_counter()
        blocks = [story.title, *story.paragraphs]
        for i, block in enumerate(blocks):
            start = position
            for run, quoted in runs(block) if i else [(block, False)]:
                speaker, speaker_engine = voice, engine
                if quoted and dialogue is not None and dialogue_engine is not None:
                    speaker, speaker_engine = dialogue, dialogue_engine
                    dialogue_lines += 1
                for sentence, _ in text_split.split(run):
                    try:
                        samples = await ctx.run_blocking(
                            speaker_engine.synthesize, sentence, speaker, 1.0
                        )
                    except EngineError as e:
                        raise JobFailed(str(e)) from None
                    if profile is not None and speaker is voice:
                        converted = await ctx.run_blocking(
                            ctx.in_saved_voice, samples, speaker_engine.sample_rate, profile
                        )
                        samples = audio.resample(converted, voice_profile.RATE, rate)
                    else:
                        samples = audio.resample(samples, speaker_engine.sample_rate, rate)
                    pause = np.zeros(int(settings.tts.sentence_pause_seconds * rate), np.float32)
                    parts += [samples, pause]
                    position += (len(samples) + len(pause)) / rate
            timeline.append({"index": i - 1, "kind": "title" if i == 0 else "paragraph",
                             "text": block, "start": round(start, 3), "end": round(position, 3)})  # fmt: skip
            parts.append(np.zeros(int(settings.tts.paragraph_pause_seconds * rate), np.float32))
            position += settings.tts.paragraph_pause_seconds
            await stages.report(
                "narrating" if i else "narrating title", i / max(1, len(blocks) - 1) if i else 1,
                f"paragraph {i} of {len(blocks) - 1}", coalesce=True,
            )  # fmt: skip
        narration_seconds = time.perf_counter() - narrate_started
        await stages.report("encoding", 0, "loudness and encoding")
        speech = audio.normalize_loudness(np.concatenate(parts), rate, settings.tts.target_lufs)
        data, media_type, extension, out_rate = await ctx.run_blocking(
            audio.encode, speech, rate, p.format
        )
        duration = len(speech) / rate
        meta = {
            "title": story.title, "language": "en", "word_count": story.words,
            "paragraphs": len(story.paragraphs), "target_words": target, "seed": seed,
            "model": endpoint.model, "writer": endpoint.model, "tokens": tokens,
            "drafts": best.number, "premise_terms_missing": ", ".join(best.missing),
            "length_note": length_note,
            "tokens_per_second": round(tokens / writing_seconds, 1) if writing_seconds else 0.0,
            "writing_seconds": round(writing_seconds, 2),
            "distinct_3gram_ratio": round(distinct_ngram_ratio(" ".join(story.paragraphs)), 3),
            "voice": p.voice if profile else voice.id,
            "dialogue_voice": dialogue.id if dialogue else "",
            "dialogue_lines": dialogue_lines,
            "duration_seconds": round(duration, 3), "sample_rate": out_rate,
            "narration_rtf": round(narration_seconds / duration, 4) if duration else 0.0,
        }  # fmt: skip
        document = {**meta, "timeline": timeline, "paragraph_texts": story.paragraphs}
        return Outcome(
            files=[
                Output("story.md", story.markdown().encode(), "text/markdown", roles.STORY),
                Output(
                    "story.json",
                    json.dumps(document, ensure_ascii=False, indent=2).encode(),
                    "application/json",
                    roles.STORY,
                ),
                Output(f"narration.{extension}", data, media_type, roles.AUDIO),
            ],
            meta=meta,
        )

    return handle
