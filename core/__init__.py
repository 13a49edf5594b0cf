"""jobdeck's engine: configuration, database, users and permissions, jobs, queue, workers.

Core imports neither the HTTP layer (``handlers``) nor the command line
(``jobdeck``); both call the functions here.
"""
__all__ = ["audit", "auth", "blocking", "cache", "config", "db", "embedded", "encoding", "errors", "follow", "hub",
           "job", "journal", "listing", "logs", "metrics", "permissions", "process", "queue", "registry", "runner",
           "states", "stats", "users", "worker"]
