"""The voice cloning service: VOICE_CLONING jobs (speech in the voice of a reference recording)."""
