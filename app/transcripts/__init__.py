"""Transcripts: the text of a recording, its timed segments, and the chunks search reads."""
