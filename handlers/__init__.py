"""jobdeck's HTTP face: the Tornado application and its request handlers."""
__all__ = ["app", "base", "system"]
