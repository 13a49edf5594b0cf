"""jobdeck's engine: configuration, database, users and permissions, jobs, queue, workers.

Core imports neither the HTTP layer (``handlers``) nor the command line
(``jobdeck``); both call the functions here.
"""
__all__ = ["audit", "auth", "blocking", "cache", "claim", "config", "counts", "db", "embedded", "encoding", "errors", "events", "follow",
           "forkserver", "hub", "job", "journal", "lease", "levels", "listing", "logs", "metrics", "permissions", "process",
           "proxies", "queue", "registry", "retention", "run", "runner", "scheduler", "schedules", "startup", "states", "stats", "tasks", "users", "worker"]
