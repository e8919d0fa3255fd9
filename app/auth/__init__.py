"""Accounts, sessions, API keys, OIDC bearer tokens, and who may do what (RBAC)."""
