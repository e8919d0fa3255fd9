"""Organisations, their members and invitations, and their API keys."""
