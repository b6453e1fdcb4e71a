"""The stt modality service (arrives with its own issue)."""
