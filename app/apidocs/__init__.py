"""The API's documentation page: Swagger UI, served from the app itself (see ``routes``)."""
