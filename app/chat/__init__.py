"""Chat with recordings: answers that cite the moment, kept as conversations."""
