"""The RQ worker side: a worker class that preloads torch and the backbone, and the jobs' lease heartbeat.

Workers: `rq worker -w backend.scaleout.worker.PreloadWorker --url $REDIS_URL mcm` (same
environment as the web process, same MODEL_DIR); the plain `rq worker` works too, only each job
then spends seconds importing torch and building the backbone.
"""
from __future__ import annotations

import logging
import os
import time

import torch
from rq import Worker

from .. import context
from ..settings import Settings
from . import jobs  # noqa: F401  (imported here, in the worker's parent: every forked job finds it loaded)

logger = logging.getLogger(__name__)



def preload() -> None:
    """Warm torch up and build the backbone (this module's imports already loaded torch, mcm_core and the
    backend's job modules).

    Measured here: in a freshly forked process the first torch module construction took ~3 s
    (lazy one-time initialisation) unless the parent had already run one. The warm-up runs with
    one intra-op thread, so no OpenMP pool exists at fork time (forking after a pool started is
    unsafe); each job's Context then sets MCM_TORCH_THREADS in its own process.
    """
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3))
    loss = net(torch.zeros(2, 1, 8, 8)).sum()
    loss.backward()
    settings = Settings.from_env()
    if settings.torch_threads == 1:
        # Build the backbone once here: every forked job then finds it in get_context()
        # instead of spending seconds constructing it (measured: ~2.5 s per job for resnet18).
        context.get_context(settings)


class PreloadWorker(Worker):
    """`rq worker -w backend.scaleout.worker.PreloadWorker`: RQ's forking worker with the heavy imports
    done once in the parent, so a forked work horse starts with them instead of importing torch
    for every job (measured: that import dominated small chunk jobs). Each job still runs in its
    own horse process, so a crash or leak in a job never takes the worker down.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        backend_logger = logging.getLogger("backend")
        if not backend_logger.handlers:  # rq only configures its own logger: show the jobs' logs too
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s"))
            backend_logger.addHandler(handler)
            backend_logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        started = time.monotonic()
        try:
            preload()
        except Exception as exc:  # e.g. bad backbone weights: every job will say so clearly
            logger.error("worker %s: preloading failed (%s: %s); jobs will load everything themselves", self.name,
                         exc.__class__.__name__, exc)
        else:
            logger.info("worker %s: preloaded torch, the backend and its backbone in %.1fs", self.name,
                        time.monotonic() - started)
