"""brokerctl: start, stop, kill -9 and restart Mosquitto for tests and fault
injection, each on its own free loopback port with its own config, always by PID.

    from brokerctl import Mosquitto
    b = Mosquitto("/tmp/b1", persistence=True).start()
    b.save(); b.kill(); b.start()      # a broker crash and restart that keeps its sessions
"""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nothing listens on port %d" % port)


# ---- Mosquitto ----------------------------------------------------------------


class Mosquitto:
    """One Mosquitto process with its own config on a free loopback port, stopped by PID."""

    def __init__(self, workdir, persistence=False, conf="", port=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.persistence = persistence
        self.extra = conf
        self.proc = None
        self.log = self.dir / "mosquitto.log"

    def write_conf(self):
        lines = []
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto', who cannot read our files
        lines += ["listener %d 127.0.0.1" % self.port, "allow_anonymous true",
                  "log_dest file %s" % self.log, "log_type all", "max_inflight_messages 100",
                  "max_queued_messages 100000"]
        if self.persistence:
            lines += ["persistence true", "persistence_location %s/" % self.dir,
                      "autosave_interval 0", "autosave_on_changes false"]
        lines.append(self.extra)
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self):
        conf = self.write_conf()
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
        except RuntimeError:
            self.proc.kill()
            raise RuntimeError("mosquitto did not start: %s" % self.proc.stderr.read().decode())
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self):
        self.stop(signal.SIGKILL)

    def save(self, timeout=5.0):
        """Make Mosquitto write its persistence database now (SIGUSR1) and wait until
        the file has been rewritten."""
        db = self.dir / "mosquitto.db"
        before = db.stat().st_mtime_ns if db.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if db.exists() and db.stat().st_mtime_ns != before:
                time.sleep(0.05)  # let the write finish (it renames a temp file into place)
                return
            time.sleep(0.01)
        raise RuntimeError("mosquitto did not save its database within %.0f s" % timeout)

    def restart(self):
        self.stop()
        return self.start()

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""
