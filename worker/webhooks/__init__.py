"""The webhook sender: its Celery app (app.py), the delivery logic (sender.py) and the sidecar that
runs one beside each GPU worker (sidecar.py)."""
