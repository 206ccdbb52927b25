"""signals.py: what a first and a second SIGINT/SIGTERM do inside the training loop (``StopRequest``), in a small
process of its own that imports no JAX (the second signal's exit is the property: it ends the process)."""

import signal
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPT = """
import os, signal, sys
from jaxbigram.signals import StopRequest
with StopRequest() as stop:
    os.kill(os.getpid(), signal.{name})
    print("first recorded:", stop.signal_name, flush=True)
    with stop.saving():
        os.kill(os.getpid(), signal.{name})
        print("second during the save noted", flush=True)
    os.kill(os.getpid(), signal.{name})
    print("never reached", flush=True)
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_second_signal_waits_out_a_save_and_otherwise_stops_at_once(name):
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(name=name)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 128 + getattr(signal, name), proc.stderr
    assert proc.stdout.splitlines() == [f"first recorded: {name}", "second during the save noted"]
    assert "Traceback" not in proc.stderr
    assert f"received {name}: finishing this chunk and saving" in proc.stderr
    assert f"received {name} again: still saving" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"stopped by {name} (a second signal): nothing more was saved")


def test_stop_request_restores_the_handlers_it_replaced():
    from jaxbigram.signals import StopRequest

    before = signal.getsignal(signal.SIGINT)
    with StopRequest():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
