"""Outgoing mail: one composer and one sender, used only from jobs (never inside a request)."""
