"""Celery worker: claims a job row, runs the trainer on it, and turns trainer events into rows."""
