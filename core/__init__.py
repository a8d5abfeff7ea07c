"""Shared by the API and the worker: settings, database, models, repositories, storage and queue names."""
