"""jobdeck's engine: configuration, database, users and permissions, and (later) jobs.

Core imports neither the HTTP layer (``handlers``) nor the command line
(``jobdeck``); both call the functions here.
"""
__all__ = ["audit", "auth", "blocking", "config", "db", "embedded", "encoding", "errors",
           "permissions", "users"]
