"""The tts modality service (arrives with its own issue)."""
