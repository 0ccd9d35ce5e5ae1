"""The detection child process must not outlive a gateway that dies without stopping it."""

import os
import signal
import subprocess
import sys
import textwrap
import time

PARENT = textwrap.dedent("""
    import sys, time
    from distillguard.config import Settings
    from distillguard.detect.process import DetectionProcess

    class Idle:
        def get_batch(self, n, timeout_s):
            time.sleep(timeout_s)
            return []

    settings = Settings(store={"url": "sqlite:///" + sys.argv[1]}, detect={"embeddings": False})
    proc = DetectionProcess(settings, Idle())
    proc.start()
    print(proc._process.pid, flush=True)
    time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_detection_child_exits_when_the_gateway_is_killed(tmp_path):
    gw = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "dg.db")], stdout=subprocess.PIPE, text=True)
    try:
        child = int(gw.stdout.readline())
        time.sleep(1.0)
        assert _alive(child), "the detection child did not start"
        gw.send_signal(signal.SIGKILL)  # a crash: no stop(), no sentinel on the pipe
        gw.wait(10)
        deadline = time.monotonic() + 60
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(child), "the detection child outlived its gateway"
    finally:
        if gw.poll() is None:
            gw.kill()
