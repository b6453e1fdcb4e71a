"""How results are judged: intelligibility, the word error rate of a Whisper round trip (speaker
similarity is `speaker.cosine` of two embeddings), the same for cloning and dubbing."""

from __future__ import annotations


def word_error_rate(expected: str, heard: str) -> float:
    """WER of `heard` against `expected`, case and punctuation ignored."""
    import jiwer

    clean = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                           jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])  # fmt: skip
    return float(jiwer.wer(expected, heard, reference_transform=clean, hypothesis_transform=clean))
