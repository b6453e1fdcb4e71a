"""A small random-initialised Bark checkpoint of the real architecture (transformers'
BarkModel: semantic, coarse and fine GPTs with Bark's vocabulary sizes, and the 24 kHz EnCodec),
with a tokenizer, Bark's generation settings and one speaker preset, saved as the published
checkpoints are. No Bark weights ship in any package: this proves the loading and generation
code; on a GPU host, point VOXMESH_TTS__BARK_DIR at a real copy of suno/bark instead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import BarkConfig, BarkModel, BertTokenizer, EncodecConfig
from transformers.models.bark.configuration_bark import (
    BarkCoarseConfig,
    BarkFineConfig,
    BarkSemanticConfig,
)
from transformers.models.bark.generation_configuration_bark import (
    BarkCoarseGenerationConfig,
    BarkFineGenerationConfig,
    BarkSemanticGenerationConfig,
)


def build(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    small = dict(num_layers=1, num_heads=2, hidden_size=32)
    config = BarkConfig(
        semantic_config=BarkSemanticConfig(
            **small, input_vocab_size=129600, output_vocab_size=10048
        ).to_dict(),
        coarse_acoustics_config=BarkCoarseConfig(
            **small, input_vocab_size=12096, output_vocab_size=12096
        ).to_dict(),
        fine_acoustics_config=BarkFineConfig(
            **small, input_vocab_size=1056, output_vocab_size=1056, n_codes_total=8, n_codes_given=1
        ).to_dict(),
        codec_config=EncodecConfig().to_dict(),
    )
    model = BarkModel(config)
    model.save_pretrained(out)
    # Bark's own generation settings, as the published checkpoints carry them.
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "semantic_config": BarkSemanticGenerationConfig().to_dict(),
                "coarse_acoustics_config": BarkCoarseGenerationConfig().to_dict(),
                "fine_acoustics_config": BarkFineGenerationConfig().to_dict(),
                "sample_rate": 24000,
                "codebook_size": 1024,
            }
        )
    )
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *list("abcdefghijklmnopqrstuvwxyz.,!?[]'"),
        "hello",
        "world",
        "laughs",
        "##s",
    ]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(out / "vocab.txt"), do_lower_case=True)
    rng = np.random.default_rng(0)
    tokenizer.save_pretrained(out)
    (out / "speaker_embeddings").mkdir(exist_ok=True)
    prompts = {
        "semantic_prompt": rng.integers(0, 10000, 40),
        "coarse_prompt": rng.integers(0, 1024, (2, 60)),
        "fine_prompt": rng.integers(0, 1024, (8, 60)),
    }
    entry = {}
    for key, value in prompts.items():
        np.save(out / "speaker_embeddings" / f"v2_en_speaker_6_{key}.npy", value)
        entry[key] = f"speaker_embeddings/v2_en_speaker_6_{key}.npy"
    (out / "speaker_embeddings_path.json").write_text(
        json.dumps({"repo_or_path": str(out), "v2/en_speaker_6": entry})
    )
    return out
