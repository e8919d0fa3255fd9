"""Recordings: upload, list, edit, delete, media, and the pipeline status they move through."""
