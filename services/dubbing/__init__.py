"""The dubbing modality service (arrives with its own issue)."""
