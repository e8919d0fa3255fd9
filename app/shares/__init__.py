"""Share links: a recording, its document or a conversation, readable by anyone with the link."""
