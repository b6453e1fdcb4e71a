"""How results are judged: intelligibility (word error rate of a Whisper round trip) and speaker
similarity (cosine of speaker embeddings), the same for cloning, dubbing and the benchmarks."""

from __future__ import annotations

from voxmesh.speech.speaker import cosine as similarity

__all__ = ["similarity", "word_error_rate"]


def word_error_rate(expected: str, heard: str) -> float:
    """WER of `heard` against `expected`, case and punctuation ignored."""
    import jiwer

    clean = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                           jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])  # fmt: skip
    return float(jiwer.wer(expected, heard, reference_transform=clean, hypothesis_transform=clean))
