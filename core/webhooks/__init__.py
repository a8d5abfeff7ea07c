"""Webhooks shared by the API and the worker: Standard Webhooks signing and the delivery outbox."""
