"""Every call the backend and the admin command make to Label Studio's REST API: client.py (the
backend's: tasks, predictions, model versions, ML backends, tabs listing), tabs.py (the Data Manager
tabs the queue is served from), admin.py (the admin command's operations, errors in plain words)."""
