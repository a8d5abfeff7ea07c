"""The REST API (FastAPI). Torch-free: it validates, persists, and enqueues by task name."""
