"""Record: record, transcribe, search and chat with your meetings."""
