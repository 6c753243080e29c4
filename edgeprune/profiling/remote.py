"""Profiling on a real device over ssh: the same worker (worker.py, numpy + onnxruntime only) is copied there and runs
the same measurements; results stream back as one JSON line per finished measurement and land in the same Report.

    edgeprune profile out/smol-int4 --device devices/edge-arm-2t.toml --remote ssh://pi@raspberrypi.local --out runs/pi

Transport is the system's ``ssh`` and ``scp`` (what users already have configured: agent, ~/.ssh/config, jump hosts),
always with BatchMode (no prompts) and host-key checking on. On the device, under ``remote_dir``:
``models/<sha256>/`` keeps each model once (re-sent only when its files change) and ``runs/run-*/`` holds one run's
runner, jobs and scratch files; the run folder is removed on success, failure, Ctrl-C or a lost connection.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from edgeprune.errors import EdgepruneError

WORKER_NAME = "edgeprune_worker.py"
PROBE_TIMEOUT_S = 180.0  # importing onnxruntime on a slow board takes seconds
SPACE_MARGIN_BYTES = 16 * 2**20  # jobs, results and ORT traces next to the models
_URL_FIX = "write it as ssh://user@host or ssh://user@host:2222"


class RemoteRunLost(EdgepruneError):
    """The remote run stopped early (connection lost, runner killed); ``report`` holds what was measured, and is written."""

    def __init__(self, problem: str, fix: str, report):
        super().__init__(problem, fix)
        self.report = report


@dataclass(frozen=True)
class SshTarget:
    """A parsed ssh://[user@]host[:port] address."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return "ssh://" + (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")

    @property
    def destination(self) -> str:
        """[user@]host as ssh takes it."""
        return (f"{self.user}@" if self.user else "") + self.host

    @property
    def scp_destination(self) -> str:
        """[user@]host as scp takes it (an IPv6 address in brackets, since scp splits host:path)."""
        return (f"{self.user}@" if self.user else "") + (f"[{self.host}]" if ":" in self.host else self.host)


def parse_target(url: str) -> SshTarget:
    """``ssh://user@host[:port]`` → SshTarget, or a one-line error saying what is wrong with the address."""
    def bad(why: str):
        raise EdgepruneError(f"remote address '{url}' {why}", _URL_FIX)

    text = (url or "").strip()
    if "://" not in text:
        bad("has no scheme")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "ssh":
        bad(f"uses '{parts.scheme}://', not ssh://")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        bad("has a path, query or fragment")
    if parts.password is not None:
        bad("has a password; only key authentication is used")
    try:
        port = parts.port
    except ValueError:
        bad("has a port that is not a number from 1 to 65535")
    host, user = parts.hostname, parts.username
    if not host:
        bad("names no host")
    for what, value in (("host", host), ("user", user)):
        if value is not None and (not value or value.startswith("-") or any(c.isspace() or c in "@/\\'\"`$;&|<>" for c in value)):
            bad(f"has an unusable {what} '{value}'")
    if port == 0:
        bad("has a port that is not a number from 1 to 65535")
    return SshTarget(host, user or None, port)


@dataclass(frozen=True)
class SshOptions:
    """How far to trust the device; host-key checking is never turned off.

    ``accept_new_host_key``: trust a host seen for the first time and remember its key (StrictHostKeyChecking=accept-new);
    a key that differs from the remembered one is always refused. ``known_hosts``: the known_hosts file (default: ssh's)."""

    accept_new_host_key: bool = False
    known_hosts: str | None = None
    connect_timeout_s: int = 10


class Ssh:
    """The ``ssh`` / ``scp`` command lines for one device, and their failures as one-line errors."""

    def __init__(self, target: SshTarget, identity: str | None, options: SshOptions):
        self.target, self.options = target, options
        self.identity = str(Path(identity).expanduser()) if identity else None
        if self.identity and not Path(self.identity).is_file():
            raise EdgepruneError(f"ssh identity file '{identity}' does not exist", "pass --identity with your private key file")
        if shutil.which("ssh") is None or shutil.which("scp") is None:
            raise EdgepruneError("remote profiling needs the ssh and scp commands, which are not installed here",
                                 "install OpenSSH's client (e.g. apt-get install openssh-client)")

    def _options(self) -> list[str]:
        o = self.options
        out = ["-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={'accept-new' if o.accept_new_host_key else 'yes'}",
               "-o", f"ConnectTimeout={o.connect_timeout_s}", "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"]
        if o.known_hosts:
            out += ["-o", f'UserKnownHostsFile="{o.known_hosts}"']
        if self.identity:
            out += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        return out

    def argv(self, command: str) -> list[str]:
        port = ["-p", str(self.target.port)] if self.target.port else []
        return ["ssh", *self._options(), *port, self.target.destination, command]

    def scp_argv(self, sources: list[Path], remote_path: str) -> list[str]:
        port = ["-P", str(self.target.port)] if self.target.port else []
        return ["scp", "-r", "-q", *self._options(), *port, *map(str, sources), f"{self.target.scp_destination}:{remote_path}"]

    def run(self, command: str, stdin: bytes | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.argv(command), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgepruneError(f"{self.target} did not answer within {timeout:.0f}s",
                                 "check the device is up and not overloaded") from None

    def shown(self) -> str:
        """The ssh command line a person would type to reach the device."""
        return " ".join(["ssh"] + (["-p", str(self.target.port)] if self.target.port else [])
                        + (["-i", shlex.quote(self.identity)] if self.identity else []) + [self.target.destination])

    def failure(self, stderr: str, doing: str) -> EdgepruneError:
        """ssh's own failure (exit 255) as a one-line error naming the problem and the fix."""
        t = self.target
        lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("@")]
        last = lines[-1] if lines else "no message"
        text = stderr.lower()
        if "could not resolve hostname" in text:
            return EdgepruneError(f"unknown host '{t.host}' ({last})",
                                  "check the name in the ssh:// address, or use the device's IP address")
        if any(s in text for s in ("connection refused", "timed out", "no route to host", "network is unreachable", "connection reset")):
            return EdgepruneError(f"cannot reach {t}: {last}", f"check that the device is on and runs sshd on port {t.port or 22}")
        if "remote host identification has changed" in text or "offending" in text or "host key mismatch" in text:
            where = f"[{t.host}]:{t.port}" if t.port else t.host
            file = f" -f {shlex.quote(self.options.known_hosts)}" if self.options.known_hosts else ""
            return EdgepruneError(f"the host key of {t} differs from the one in known_hosts; refused",
                                  f"if the device was reinstalled, drop the old key with: ssh-keygen{file} -R '{where}' and "
                                  "connect again; otherwise someone may be intercepting the connection")
        if "host key verification failed" in text:
            return EdgepruneError(f"{t} has no host key in known_hosts; refused",
                                  f"check its fingerprint and connect once with {self.shown()}, or pass --accept-new-host-key "
                                  "to trust it on first use")
        if "permission denied" in text or "too many authentication failures" in text:
            key = f"the key {self.identity}" if self.identity else "your ssh keys"
            return EdgepruneError(f"{t.destination} refused {key} ({last})",
                                  f"add the public key to the device's ~/.ssh/authorized_keys (ssh-copy-id -i KEY.pub "
                                  f"{t.destination}), or pass --identity with a key it accepts")
        return EdgepruneError(f"{doing} on {t} failed: {last}", f"run {self.shown()} by hand to see why")


def model_key(folder: Path, files: dict[str, int]) -> str:
    """sha256 over a model's files (names, sizes, contents): the name of its cache folder on the device."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\0".encode())
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class RemoteModel:
    """One model to measure on the device: its folder here and the files that make it up (graph + external data)."""

    folder: Path
    files: dict  # name relative to folder → bytes
    key: str  # model_key(folder, files)

    @property
    def size(self) -> int:
        return sum(self.files.values())


class RemoteSession:
    """One profile() call's time on a device: ``connect`` checks its Python, numpy and onnxruntime and reads its host;
    ``measure`` sends the runner, the jobs and the models not cached yet, runs them and yields each result as it
    arrives; ``close`` (also on errors and Ctrl-C) stops the runner and removes the run folder on the device."""

    def __init__(self, device, options: SshOptions, progress: Callable[[str], None] | None = None):
        self.target = parse_target(device.remote)
        self.ssh = Ssh(self.target, device.identity, options)
        self.python, self.remote_dir = device.remote_python, device.remote_dir
        self.progress = progress or (lambda line: None)
        self.host: dict = {}
        self.notes: list[str] = []
        self.lost: str | None = None  # why the run stopped early, if it did
        self.root = self.run_dir = None
        self._models: dict[str, RemoteModel] = {}
        self._cached: set[str] = set()
        self._proc: subprocess.Popen | None = None
        self._run_dir_gone = self._closed = False
        self._stage = Path(tempfile.mkdtemp(prefix="edgeprune-remote-"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- before measuring -------------------------------------------------------------------------------------------

    def connect(self, models: list[RemoteModel]) -> dict:
        """Check the device can measure and has room; return its host info (CPU, cores, RAM, OS, versions, providers)."""
        self._models = {m.key: m for m in models}
        self.progress(f"checking {self.target}: Python, numpy, onnxruntime, free space")
        request = {"remote_dir": self.remote_dir, "models": {k: m.size for k, m in self._models.items()},
                   "margin_bytes": SPACE_MARGIN_BYTES}
        py = shlex.quote(self.python)
        check = "import sys; print('@@python %d.%d.%d' % sys.version_info[:3]); sys.exit(sys.version_info < (3, 9))"
        command = f"{py} -c {shlex.quote(check)} && exec {py} - probe {shlex.quote(json.dumps(request))}"
        source = Path(__file__).with_name("worker.py").read_bytes()
        done = self.ssh.run(command, stdin=source, timeout=PROBE_TIMEOUT_S + self.ssh.options.connect_timeout_s)
        out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        if "permanently added" in err.lower():
            self.notes.append(f"{self.target}: its host key was new and is now trusted and remembered (--accept-new-host-key)")
        version = next((line.split()[1] for line in out.splitlines() if line.startswith("@@python ")), None)
        found = next((json.loads(line[len("@@probe "):]) for line in out.splitlines() if line.startswith("@@probe ")), None)
        if done.returncode == 255 and version is None:
            raise self.ssh.failure(err, "connecting")
        if version is None:
            raise EdgepruneError(f"{self.target} has no Python at '{self.python}' ({_last_line(err)})",
                                 "install Python 3.9 or newer there, or name it with --remote-python "
                                 "(or remote_python in the device profile)")
        if found is None and tuple(int(x) for x in version.split(".")[:2]) < (3, 9):
            raise EdgepruneError(f"Python at '{self.python}' on {self.target} is {version}; the runner needs 3.9 or newer",
                                 "install a newer Python there and name it with --remote-python "
                                 "(or remote_python in the device profile)")
        if found is None:
            raise EdgepruneError(f"checking {self.target} failed: {_last_line(err)}", f"run {self.ssh.shown()} by hand to see why")
        missing = [name for name in ("onnxruntime", "numpy") if found.get(name) is None]
        if missing:
            raise EdgepruneError(f"Python {version} at '{self.python}' on {self.target} has no {' and no '.join(missing)}",
                                 f"run: {self.ssh.shown()} {shlex.quote(self.python)} -m pip install onnxruntime numpy")
        self.root, self._cached = found["remote_dir"], set(found["cached"])
        if "run_dir" not in found:
            raise EdgepruneError(f"not enough space on {self.target}: {_mib(found['free_bytes'])} free in {self.root}, "
                                 f"{_mib(found['needed_bytes'] + SPACE_MARGIN_BYTES)} needed ({_mib(found['needed_bytes'])} of "
                                 f"models not cached there + {_mib(SPACE_MARGIN_BYTES)} for results)",
                                 "free some space there, or set remote_dir in the device profile to a larger disk")
        self.run_dir = found["run_dir"]
        self.host = h = dict(found["host"], target=str(self.target))
        self.progress(f"{self.target}: {h['cpu']}, {len(h['usable_cores'])} usable cores, {h['memory_mb']} MiB RAM; "
                      f"Python {h['python']}, numpy {h['numpy']}, onnxruntime {h['onnxruntime']}")
        return self.host

    def graph_path(self, model: RemoteModel, graph_name: str) -> str:
        """Where ``graph_name`` of ``model`` lies on the device (its cache folder)."""
        return f"{self.root}/models/{model.key}/{graph_name}"

    def _send(self, plan: dict) -> None:
        """One scp: the runner, jobs.json and the models not cached, into the run folder (the runner moves the models
        into the cache by rename, so a half-sent model is never taken for a cached one)."""
        shutil.copyfile(Path(__file__).with_name("worker.py"), self._stage / WORKER_NAME)
        (self._stage / "jobs.json").write_text(json.dumps(plan))
        sources = [self._stage / WORKER_NAME, self._stage / "jobs.json"]
        upload = [m for k, m in self._models.items() if k not in self._cached]
        for m in upload:
            for name in m.files:
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise EdgepruneError(f"'{m.folder}' refers to external data '{name}' outside its folder",
                                         "keep the graph and its external data in one folder (re-export it)")
                link = self._stage / "upload" / m.key / name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((m.folder / name).resolve())  # scp -r follows links: the files are not copied here
        for m in self._models.values():
            if m.key in self._cached:
                self.progress(f"{m.folder.name}: cached on {self.target.host} ({m.key[:12]}), not sent again")
        if upload:
            sources.append(self._stage / "upload")
            self.progress(f"copying {len(upload)} model(s), {_mib(sum(m.size for m in upload))}, to {self.target}")
        done = subprocess.run(self.ssh.scp_argv(sources, self.run_dir + "/"), stdin=subprocess.DEVNULL, capture_output=True)
        if done.returncode == 0:
            return
        err = done.stderr.decode(errors="replace")
        if done.returncode == 255 and "scp:" not in err:
            raise self.ssh.failure(err, "copying")
        needed = sum(m.size for m in upload)
        free = self._free_bytes()
        if "no space left" in err.lower() or (free is not None and free < needed + SPACE_MARGIN_BYTES):
            raise EdgepruneError(f"copying to {self.target} failed: no space left on the device ({_mib(free)} free in {self.root}, "
                                 f"{_mib(needed)} of models to send)",
                                 "free some space there, or set remote_dir in the device profile to a larger disk")
        raise EdgepruneError(f"copying to {self.target} failed: {_last_line(err)}", f"check that {self.root} is writable on the device")

    def _free_bytes(self) -> int | None:
        check = f"import os; s = os.statvfs({self.root!r}); print(s.f_bavail * s.f_frsize)"
        done = self.ssh.run(f"{shlex.quote(self.python)} -c {shlex.quote(check)}", timeout=60 + self.ssh.options.connect_timeout_s)
        try:
            return int(done.stdout.split()[-1])
        except (ValueError, IndexError):
            return None

    # --- measuring --------------------------------------------------------------------------------------------------

    def measure(self, jobs: list, limit_mb: float | None, timeout_s: float,
                trace_dir: Path | None) -> Iterator[tuple[int, dict | None, Path | None]]:
        """Run ``jobs`` (runner.Job, their specs naming graph_path()s) on the device; yield (index, the supervisor's
        outcome, trace file here) as each finishes, then (index, None, None) for any the device did not finish."""
        plan = {"models_dir": f"{self.root}/models", "models": sorted(self._models),
                "jobs": [{"spec": dict(j.spec, op_profile=trace_dir is not None), "limit_mb": limit_mb, "timeout_s": timeout_s}
                         for j in jobs]}
        self._send(plan)
        command = f"exec {shlex.quote(self.python)} {shlex.quote(f'{self.run_dir}/{WORKER_NAME}')} batch {shlex.quote(self.run_dir)}"
        # stdin stays open and unused: the runner takes its EOF to mean this side is gone. A session of its own, so a
        # Ctrl-C in the terminal reaches us (who then stop the runner and clean up), not ssh directly.
        self._proc = subprocess.Popen(self.ssh.argv(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)
        stderr: list[bytes] = []
        reader = threading.Thread(target=lambda: stderr.extend(self._proc.stderr), daemon=True)
        reader.start()
        finished, ended = set(), False
        for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("@@start "):
                self.progress(jobs[int(line.split()[1])].label + f" on {self.target.host}")
            elif line.startswith("@@result "):
                try:
                    data = json.loads(line[len("@@result "):])
                except ValueError:  # cut off by a lost connection
                    break
                index, outcome = data["index"], data["outcome"]
                trace = None
                if trace_dir is not None and outcome.get("trace_z"):
                    trace_dir.mkdir(parents=True, exist_ok=True)
                    trace = trace_dir / jobs[index].trace_name
                    trace.write_bytes(zlib.decompress(_b64(outcome.pop("trace_z"))))
                finished.add(index)
                yield index, outcome, trace
            elif line == "@@end":
                ended = True
        self._proc.wait()
        reader.join(timeout=5)
        err = b"".join(stderr).decode(errors="replace")
        if ended:
            self._run_dir_gone = self._proc.returncode == 0  # the runner removes its folder on the way out
        else:
            code = self._proc.returncode
            if code == 255 and err.strip():
                self.lost = f"the ssh connection to {self.target} was lost ({_last_line(err)})"
            elif code == 255:  # ssh says nothing when the remote command dies of a signal
                self.lost = f"the runner on {self.target} was killed before it finished"
            else:
                self.lost = (f"the runner on {self.target} stopped with exit code {code}"
                             + (f" ({_last_line(err)})" if err.strip() else ""))
        for index in range(len(jobs)):
            if index not in finished:
                yield index, None, None

    # --- afterwards ---------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the runner if it still runs, remove the run folder on the device (the cache stays), forget the stage."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._proc is not None and self._proc.poll() is None:
                try:
                    self._proc.stdin.close()  # the runner sees EOF, stops its measurement and removes its folder
                except OSError:
                    pass
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self.run_dir and not self._run_dir_gone:
                self._remove_run_dir()
        finally:
            shutil.rmtree(self._stage, ignore_errors=True)

    def _remove_run_dir(self) -> None:
        if not (self.root and self.run_dir.startswith(f"{self.root}/runs/run-")):  # never rm -rf anything else
            return
        try:
            done = self.ssh.run(f"rm -rf -- {shlex.quote(self.run_dir)}", timeout=30 + self.ssh.options.connect_timeout_s)
            ok, why = done.returncode == 0, _last_line(done.stderr.decode(errors="replace"))
        except EdgepruneError as exc:
            ok, why = False, exc.problem
        if ok:
            self._run_dir_gone = True
        else:
            self.notes.append(f"could not remove {self.run_dir} on {self.target} ({why}); the runner removes it itself when "
                              "it notices the connection is gone, else delete it by hand")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _mib(n: int | None) -> str:
    return "an unknown amount" if n is None else f"{n / 2**20:.1f} MiB"


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


__all__ = ["RemoteModel", "RemoteRunLost", "RemoteSession", "SshOptions", "SshTarget", "model_key", "parse_target"]
