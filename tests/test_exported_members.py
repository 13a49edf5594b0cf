"""Every name a module lists in ``__all__`` exists (the public API is pinned)."""
from __future__ import annotations

import importlib
import pkgutil

import pytest

import core
import handlers
import jobdeck
import jobs

MODULES = sorted({f"{package.__name__}.{info.name}" for package in (core, handlers, jobdeck, jobs)
                  for info in pkgutil.iter_modules(package.__path__) if info.name != "__main__"})


@pytest.mark.parametrize("name", ["core", "handlers", "jobdeck", "jobs"] + MODULES)
def test_all_names_exist(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [member for member in module.__all__ if not hasattr(module, member)
               and importlib.util.find_spec(f"{name}.{member}") is None]
    assert not missing, f"{name}.__all__ names missing members: {missing}"


def test_core_imports_neither_tornado_nor_click():
    import subprocess
    import sys
    code = ("import sys, " + ", ".join(m for m in MODULES if m.startswith("core.")) +
            "; bad = [m for m in ('tornado', 'click', 'handlers', 'jobdeck') if m in sys.modules];"
            " sys.exit(str(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
