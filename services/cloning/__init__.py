"""The cloning modality service (arrives with its own issue)."""
