"""Search by meaning and by words over a tenant's transcript chunks."""
