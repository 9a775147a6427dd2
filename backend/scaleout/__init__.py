"""Scale-out on Redis + RQ (used when REDIS_URL is set): coordination, worker, jobs."""
