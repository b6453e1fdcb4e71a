"""Bark speaker prompts from a reference recording: Bark's own way to speak in a voice.

A Bark history prompt has three parts: semantic tokens, coarse acoustic tokens (EnCodec's first
2 codebooks) and fine acoustic tokens (all 8). From a reference recording:
- coarse and fine: the reference encoded by the checkpoint's own 24 kHz EnCodec (6 kbps,
  8 codebooks), its first 10 seconds;
- semantic: the reference's transcript (Whisper) run through Bark's text-to-semantic model (the
  published recipe uses a HuBERT quantiser for this; no such weights ship, so the transcript
  stands in, which keeps the prompt's words aligned with its sounds).

Bark's weights ship in no package: this runs where VOXMESH_TTS__BARK_DIR points at a checkpoint
(tests build a small random-initialised one of the real architecture to prove the path).
"""

from __future__ import annotations

import numpy as np

from voxmesh import audio
from voxmesh.speech.tts import BarkEngine

PROMPT_SECONDS = 10.0


def speaker_prompt(engine: BarkEngine, reference: np.ndarray, rate: int, transcript: str,
                   max_semantic_tokens: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """The history prompt for `reference` (mono float at `rate`) said as `transcript`."""
    import torch
    from transformers.models.bark.generation_configuration_bark import (
        BarkSemanticGenerationConfig,
    )

    model = engine.model
    wav = audio.resample(reference, rate, engine.sample_rate)[
        : int(PROMPT_SECONDS * engine.sample_rate)
    ]
    with torch.no_grad():
        encoded = model.codec_model.encode(
            torch.from_numpy(np.ascontiguousarray(wav, np.float32))[None, None].to(engine.device),
            bandwidth=6.0,
        )
    codes = encoded.audio_codes[0, 0].cpu().numpy().astype(np.int64)  # (codebooks, frames)
    if codes.shape[0] < 8:
        raise ValueError(f"the checkpoint's EnCodec gives {codes.shape[0]} codebooks; Bark needs 8")
    config = BarkSemanticGenerationConfig(**model.generation_config.semantic_config)
    inputs = engine.processor(transcript or "hello", return_tensors="pt")
    limits = {"max_new_tokens": max_semantic_tokens} if max_semantic_tokens else {}
    with torch.no_grad():
        semantic = model.semantic.generate(
            inputs["input_ids"].to(engine.device), semantic_generation_config=config,
            attention_mask=inputs.get("attention_mask"), do_sample=True, **limits,
        )  # fmt: skip
    tokens = semantic[0].cpu().numpy().astype(np.int64)
    tokens = tokens[(tokens >= 0) & (tokens < config.semantic_vocab_size)]
    return {"semantic_prompt": tokens, "coarse_prompt": codes[:2], "fine_prompt": codes[:8]}
