"""The admin command (`python -m backend.admin`): cli.py (connect, enable-ordering, tail-classes, retrain,
status), report.py (the mining report fetched from the backend), backend_client.py (HTTP to the backend)."""
