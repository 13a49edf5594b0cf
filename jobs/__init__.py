"""Job classes: the base class users subclass, and the built-in jobs in ``jobs.example``.

Write a job by subclassing ``Job``::

    from jobs import Job

    class Hello(Job):
        \"\"\"Says hello.\"\"\"
        def execute(self, name: str = "world") -> str:
            self.logger.info("hello %s", name)
            return f"hello {name}"
"""
from core.job import Deferred, Job

__all__ = ["Job", "Deferred"]
