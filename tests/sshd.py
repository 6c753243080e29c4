"""A private sshd on 127.0.0.1 with throw-away keys, for the remote-profiling tests and the loopback benchmark.

Its host key, client keys, authorized_keys, sshd_config, pid file, log and known_hosts all live in one folder;
~/.ssh is neither read nor written. Plain standard library (no pytest), so benchmarks/ can start one too.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


class SshdMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeprune-test", "-f", str(path)], check=True)
    return path


def find_sshd() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None)


class LoopbackSshd:
    """sshd -D on 127.0.0.1:PORT that accepts ``key`` (not ``stranger``) for the current user; ``known_hosts`` trusts it."""

    def __init__(self, root: Path):
        sshd = find_sshd()
        if sshd is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
            raise SshdMissing("sshd, ssh or ssh-keygen is not installed (apt-get install openssh-server)")
        if os.geteuid() == 0:  # sshd started by root needs its privilege-separation folder (a tmpfs path on booted systems)
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port, self.user = root, free_port(), getpass.getuser()
        self.host_key = _keygen(root / "host_key")
        self.key = _keygen(root / "client_key")
        self.stranger = _keygen(root / "stranger_key")  # not in authorized_keys
        shutil.copy(root / "client_key.pub", root / "authorized_keys")
        (root / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}", "UsePAM no",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            f"AuthorizedKeysFile {root / 'authorized_keys'}", "StrictModes no", f"PidFile {root / 'sshd.pid'}",
            "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
        kind, key = (root / "host_key.pub").read_text().split()[:2]
        self.host_public_key = key
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {kind} {key}\n")
        self._log = open(root / "sshd.log", "w")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(root / "sshd_config")], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"sshd did not start: {(root / 'sshd.log').read_text()[-500:]}") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def kill_all(self) -> None:
        """The listener and every connection it serves, as when the device drops off the network."""
        import psutil

        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:  # a connection's process may end between the listing and the kill
                if child.name().startswith("sshd"):
                    child.kill()
            except psutil.NoSuchProcess:
                pass
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
