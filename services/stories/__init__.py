"""The stories modality service (arrives with its own issue)."""
