"""The dubbing service: DUBBING jobs (a recording in another language, in the speaker's voice,
keeping the timing)."""
