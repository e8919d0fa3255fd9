"""Background jobs: procrastinate's queue in our PostgreSQL, deferred inside the request's
transaction, and their status as the API shows it."""
