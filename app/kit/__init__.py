"""Cross-cutting parts every domain shares. Nothing in kit imports a domain."""
