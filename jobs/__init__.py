"""Job classes: the base class users subclass, and the built-in jobs.

The ``Job`` base class and ``jobs.example`` arrive with the job engine.
"""
__all__: list[str] = []
