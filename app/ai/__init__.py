"""AI: OpenAI-protocol clients (embeddings, transcription, chat) and the local model server.

The light modules (``clients``, ``prompts``, ``text``, ``cli``) import no model code, so the API,
the worker and the ``record`` command stay fast to start and run without the ``ai`` extra. Only
``local_models`` (and through it ``server``) touches torch and faster-whisper, and only when a
model is first needed.
"""
