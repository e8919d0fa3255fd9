"""Input validation and sanitisation shared by every domain."""
