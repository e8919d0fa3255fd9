"""Operating a deployment from the `record` command: backups and restores (ops/backup.py)."""
