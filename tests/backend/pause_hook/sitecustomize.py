"""Test-only: with MCM_TEST_PAUSE_BEFORE_COMMIT=<seconds>, a worker started with this folder first on
PYTHONPATH sleeps inside ModelStore.save after the model files are written and before the version
is renamed into place, so test_scaleout can kill it in the middle of a training deterministically.
Kept out of the backend: production code carries no test hook.
"""
import logging
import os

_SECONDS = float(os.environ.get("MCM_TEST_PAUSE_BEFORE_COMMIT") or 0)

if _SECONDS > 0:
    import time

    from backend.versions import ModelStore

    _save = ModelStore.save

    def _pausing_save(self, write_files, meta):
        def write_then_pause(directory):
            extra = write_files(directory)
            logging.getLogger("backend").warning("test hook: pausing %.0fs with model files written to %s",
                                                 _SECONDS, directory)
            time.sleep(_SECONDS)
            return extra
        return _save(self, write_then_pause, meta)

    ModelStore.save = _pausing_save
