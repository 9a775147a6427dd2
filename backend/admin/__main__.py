"""`python -m backend.admin ...`: the admin command (backend/admin/cli.py)."""
import sys

from .cli import main

sys.exit(main())
