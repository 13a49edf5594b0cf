"""bench/peers.py runs end to end (RQ against jobdeck) when redis-server and rq are installed; skipped otherwise."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or any(importlib.util.find_spec(name) is None for name in ("rq", "redis")),
    reason="needs redis-server and rq (apt-get install redis-server; pip install -e '.[bench]')")


@pytest.mark.timeout(200)
def test_peers_prints_both_rates_and_the_ratio():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "peers.py"), "--jobs", "20"], cwd=ROOT,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    rq_rate = re.search(r"^  RQ .*: 20 jobs in [\d.]+ s = (\d+) jobs/s", result.stdout, re.MULTILINE)
    jobdeck_rate = re.search(r"^  jobdeck .*: 20 jobs in [\d.]+ s = (\d+) jobs/s", result.stdout, re.MULTILINE)
    ratio = re.search(r"^  jobdeck / RQ: (\d+\.\d+)$", result.stdout, re.MULTILINE)
    assert rq_rate and jobdeck_rate and ratio, result.stdout
    assert int(rq_rate[1]) > 0 and int(jobdeck_rate[1]) > 0 and float(ratio[1]) > 0
