"""Remote profiling over ssh against a real sshd on 127.0.0.1 (throw-away host and client keys in tmp, its own config
and known_hosts; ~/.ssh is never read or written): the same report as local profiling, side by side with it; the
model cache; one-line errors for every way the connection or the device can fail; a run killed midway keeps what it
measured and leaves nothing on the device; Ctrl-C cleans up too.

Without sshd these tests skip, unless EDGEPRUNE_REQUIRE_SSHD=1 (CI), where they fail.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from edgeprune.cli import app  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.profiling import SshOptions, Workload, load_device, profile  # noqa: E402
from edgeprune.profiling.devices import DeviceProfile  # noqa: E402
from edgeprune.profiling.remote import RemoteRunLost, SshTarget, parse_target  # noqa: E402

from conftest import terminal_sigint  # noqa: E402
from sshd import LoopbackSshd, SshdMissing, free_port  # noqa: E402

runner = CliRunner()
TINY = Workload(prompt_lengths=(16,), decode_tokens=4, seq_lengths=(16,))
QUICK = Workload(seq_lengths=(8,), op_profile=False)


def _start_sshd(root: Path) -> LoopbackSshd:
    """A loopback sshd; without one, skip (locally) or fail (CI sets EDGEPRUNE_REQUIRE_SSHD=1)."""
    try:
        return LoopbackSshd(root)
    except SshdMissing as exc:
        if os.environ.get("EDGEPRUNE_REQUIRE_SSHD") == "1":
            pytest.fail(f"{exc}, and EDGEPRUNE_REQUIRE_SSHD=1")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = _start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def remote_dir(tmp_path):
    """The device's remote_dir: afterwards, no run folder may be left and no runner process may still run."""
    root = tmp_path / "device"
    yield root
    assert not (root / "runs").exists() or not list((root / "runs").iterdir())
    assert not _processes_under(root)


def _processes_under(root: Path) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(str(root) in part for part in (p.info["cmdline"] or [])):
            found.append(p)
    return found


def _device(sshd: LoopbackSshd, remote_dir: Path, **changes) -> DeviceProfile:
    fields = dict(name="ssh-test", intra_op_threads=1, warmup=1, runs=3, remote=sshd.url, identity=str(sshd.key),
                  remote_python=sys.executable, remote_dir=str(remote_dir))
    return DeviceProfile(**(fields | changes))


def _trust(sshd: LoopbackSshd) -> SshOptions:
    return SshOptions(known_hosts=str(sshd.known_hosts))


# --- the report -------------------------------------------------------------------------------------------------------


def test_remote_report_matches_local_side_by_side_and_models_are_cached(sshd, remote_dir, tiny_onnx, tmp_path):
    device = _device(sshd, remote_dir, cores=(0,))
    lines: list[str] = []
    report = profile(list(tiny_onnx), device, out=tmp_path / "r", workload=TINY, where="both", ssh=_trust(sshd), progress=lines.append)
    assert [v.name for v in report.variants] == ["llama@local", "bert@local", "llama@127.0.0.1", "bert@127.0.0.1"]
    for local, remote in zip(report.variants[:2], report.variants[2:]):
        assert not local.remote and remote.remote["target"] == sshd.url
        assert {"cpu", "logical_cores", "usable_cores", "memory_mb", "system", "python", "onnxruntime", "numpy"} <= set(remote.remote)
        assert remote.remote["memory_mb"] > 0 and remote.remote["cpu"] and remote.remote["python"].startswith("3.")
        (lr,), (rr,) = local.runs, remote.runs
        assert lr.ok and rr.ok, (lr.reason, rr.reason)
        assert rr.cores == [0]  # the profile's affinity, set on the device
        assert rr.pid != lr.pid and rr.ort["intra_op_threads"] == 1 and rr.session_ms > 0 and rr.first_inference_ms > 0
        assert set(rr.headline) == set(lr.headline) and all(v > 0 for v in rr.headline.values())
        m = rr.memory
        assert 0 < m.baseline_mb <= m.peak_load_mb and m.peak_run_mb > 0 and m.samples > 0 and 0.5 < m.agreement <= 1.2
        assert rr.op_profile.ops and (tmp_path / "r" / rr.op_profile.trace_file).is_file()
        assert rr.op_profile.trace_file != lr.op_profile.trace_file
    (dec,) = report.variants[2].runs[0].decoder
    assert dec.prefill.count == 3 and dec.decode.count % TINY.decode_tokens == 0 and dec.decode_tokens_per_s > 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"measured on {sshd.url} over ssh" in md and "llama@local, bert@local measured on this host" in md
    assert "| llama@127.0.0.1 | 1 | ok |" in md
    assert json.loads((tmp_path / "r" / "report.json").read_text())["variants"][3]["remote"]["target"] == sshd.url
    assert any("copying 2 model(s)" in line for line in lines)
    cached = sorted((remote_dir / "models").iterdir())
    assert len(cached) == 2 and all(len(p.name) == 64 for p in cached)
    sent = {p: (p / "model.onnx").stat().st_mtime_ns for p in cached}

    # Again, remote only, trusting the host key on first use into a fresh known_hosts: nothing is sent again.
    fresh = tmp_path / "known_hosts_new"
    lines.clear()
    again = profile([tiny_onnx[1]], device, out=tmp_path / "r2", workload=QUICK, progress=lines.append,
                    ssh=SshOptions(accept_new_host_key=True, known_hosts=str(fresh)))
    assert [v.name for v in again.variants] == ["bert"] and again.variants[0].runs[0].ok
    assert any("cached on 127.0.0.1" in line for line in lines) and not any("copying" in line for line in lines)
    assert {p: (p / "model.onnx").stat().st_mtime_ns for p in cached} == sent
    assert sshd.host_public_key in fresh.read_text()  # remembered (maybe hashed: HashKnownHosts)
    assert any("host key was new" in n for n in again.notes)
    assert "Measured on " + sshd.url in (tmp_path / "r2" / "report.md").read_text()


# --- errors: one line each, nothing left behind ------------------------------------------------------------------------


def _cli(args: list[str], tmp_path: Path):
    result = runner.invoke(app, ["profile", *args, "--out", str(tmp_path / "out"), "--no-op-profile", "--seq-lengths", "8"])
    assert result.exit_code == 2, (result.exit_code, result.output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    return errors[0]


def _device_toml(tmp_path: Path, sshd: LoopbackSshd, remote_dir: Path, **changes) -> Path:
    fields = {"name": "ssh-test", "intra_op_threads": 1, "warmup": 1, "runs": 2, "remote": sshd.url, "identity": str(sshd.key),
              "remote_python": sys.executable, "remote_dir": str(remote_dir)} | changes
    path = tmp_path / "device.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items() if v is not None))
    return path


def _fake_python(tmp_path: Path, version: str) -> Path:
    """A "python" that only answers the version check, as an old interpreter would."""
    path = tmp_path / "oldpython"
    path.write_text(f"#!/bin/sh\necho '@@python {version}'\nexit 1\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("case", ["unreachable", "unknown host", "refused key", "unknown host key", "changed host key",
                                  "no onnxruntime", "old python", "no python"])
def test_remote_failures_are_one_line_errors(case, sshd, remote_dir, tiny_onnx, tmp_path):
    toml = {"unreachable": dict(remote=f"ssh://{sshd.user}@127.0.0.1:{free_port()}"),
            "unknown host": dict(remote="ssh://pi@no-such-device.invalid"),
            "refused key": dict(identity=str(sshd.stranger)),
            "old python": dict(remote_python=str(_fake_python(tmp_path, "3.8.10"))),
            "no python": dict(remote_python=str(tmp_path / "no" / "python3"))}.get(case, {})
    args = [str(tiny_onnx[1]), "--device", str(_device_toml(tmp_path, sshd, remote_dir, **toml))]
    known_hosts = sshd.known_hosts
    if case == "unknown host key":
        known_hosts = tmp_path / "empty_known_hosts"
        known_hosts.write_text("")
    if case == "changed host key":  # another machine's key under this address; --accept-new-host-key must not help
        known_hosts = tmp_path / "other_known_hosts"
        other = (sshd.root / "stranger_key.pub").read_text().split()
        known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
        args.append("--accept-new-host-key")
    if case == "no onnxruntime":
        bare = tmp_path / "bare"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
        args += ["--remote-python", str(bare / "bin" / "python")]
    line = _cli(args + ["--known-hosts", str(known_hosts)], tmp_path)
    expected = {
        "unreachable": ["cannot reach", "Connection refused", "runs sshd on port"],
        "unknown host": ["unknown host 'no-such-device.invalid'", "IP address"],
        "refused key": [f"{sshd.user}@127.0.0.1 refused the key", "authorized_keys", "--identity"],
        "unknown host key": ["has no host key in known_hosts; refused", "--accept-new-host-key"],
        "changed host key": ["differs from the one in known_hosts; refused", "ssh-keygen -f", f"-R '[127.0.0.1]:{sshd.port}'"],
        "no onnxruntime": ["has no onnxruntime and no numpy",
                           f"run: ssh -p {sshd.port} -i {sshd.key} {sshd.user}@127.0.0.1 {tmp_path}/bare/bin/python -m pip install onnxruntime numpy"],
        "old python": ["is 3.8.10; the runner needs 3.9 or newer", "--remote-python"],
        "no python": ["has no Python at", "--remote-python"],
    }[case]
    for text in expected:
        assert text in line, line
    assert not (remote_dir / "models").exists() or not any((remote_dir / "models").iterdir())


@pytest.mark.parametrize("url,message", [
    ("pi@raspberrypi.local", "has no scheme"),
    ("adb://phone", "uses 'adb://', not ssh://"),
    ("ssh://pi@host:99999", "port that is not a number"),
    ("ssh://pi@host:ssh", "port that is not a number"),
    ("ssh://pi:secret@host", "has a password"),
    ("ssh://pi@host/home/pi", "has a path"),
    ("ssh://", "names no host"),
    ("ssh://-oProxyCommand=x@host", "unusable user"),
])
def test_malformed_remote_addresses(url, message, tmp_path, tiny_onnx):
    (tmp_path / "d.toml").write_text('name = "d"\n')
    line = _cli([str(tiny_onnx[1]), "--device", str(tmp_path / "d.toml"), "--remote", url], tmp_path)
    assert message in line and "ssh://user@host" in line
    (tmp_path / "bad.toml").write_text(f'name = "bad"\nruns = 2\nremote = "{url}"\n')
    with pytest.raises(EdgepruneError) as err:
        load_device(tmp_path / "bad.toml")
    assert "bad.toml:3:" in str(err.value) and message in str(err.value)


def test_parse_target_round_trips():
    assert parse_target("ssh://pi@raspberrypi.local") == SshTarget("raspberrypi.local", "pi", None)
    t = parse_target("ssh://root@[::1]:2222")
    assert (t.host, t.port, str(t), t.scp_destination) == ("::1", 2222, "ssh://root@[::1]:2222", "root@[::1]")
    assert str(parse_target("ssh://host")) == "ssh://host" and parse_target("ssh://host").destination == "host"


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("when", ["before copying", "while copying"])
def test_device_out_of_space(when, sshd, tmp_path, tiny_onnx):
    device_disk = tmp_path / "disk"
    if not _tmpfs(device_disk, "8m" if when == "before copying" else "20m"):
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        device = _device(sshd, device_disk)

        def fill(line: str):  # the disk fills up after the check, before the copy (another process on the device)
            if line.startswith("copying"):
                free = shutil.disk_usage(device_disk).free
                with open(device_disk / "filler", "wb") as f:
                    f.write(b"\0" * (free - 64 * 1024))

        with pytest.raises(EdgepruneError) as err:
            profile([tiny_onnx[0]], device, out=tmp_path / "r", workload=QUICK, ssh=_trust(sshd), progress=fill)
        message = str(err.value)
        assert "\n" not in message and "larger disk" in message
        if when == "before copying":
            assert "not enough space on" in message and "MiB needed" in message
        else:
            assert "no space left on the device" in message
        assert not (tmp_path / "r").exists()
        for folder in ("runs", "models"):  # nothing half-sent is left, and nothing half-sent was taken into the cache
            assert not (device_disk / folder).exists() or not list((device_disk / folder).iterdir())
    finally:
        subprocess.run(["umount", str(device_disk)], check=True)


# --- a run that dies midway -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["runner killed", "connection lost"])
def test_run_killed_midway_keeps_results_and_leaves_nothing(how, sshd, remote_dir, tiny_onnx, tmp_path):
    server = _start_sshd(tmp_path / "own-sshd") if how == "connection lost" else sshd
    device = _device(server, remote_dir)

    def kill_during_second(line: str):
        if line.startswith("second@") or line.startswith("second:"):
            if how == "runner killed":
                for p in _processes_under(remote_dir):
                    if "batch" in p.info["cmdline"]:
                        p.kill()
            else:
                server.kill_all()

    try:
        with pytest.raises(RemoteRunLost) as err:
            profile([tiny_onnx[1], tiny_onnx[1]], device, out=tmp_path / "r", workload=QUICK, names=["first", "second"],
                    ssh=_trust(server), progress=kill_during_second)
    finally:
        server.stop() if server is not sshd else None
    message = str(err.value)
    assert "1 of 2 remote measurements finished" in message and "\n" not in message
    if how == "connection lost":
        assert "the ssh connection to" in message and "was lost" in message, message
    else:
        assert "was killed before it finished" in message, message
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    first, second = (v["runs"][0] for v in data["variants"])
    assert first["status"] == "ok" and first["encoder"][0]["latency"]["p50"] > 0
    assert second["status"] == "failed" and second["reason"].startswith("not measured: ")
    assert any("stopped early" in n for n in data["notes"])
    deadline = time.monotonic() + 10  # after a lost connection the runner notices EOF and removes its folder itself
    while (list((remote_dir / "runs").iterdir()) or _processes_under(remote_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_interrupt_stops_the_remote_run_and_removes_its_folder(sshd, remote_dir, tiny_onnx, tmp_path):
    toml = _device_toml(tmp_path, sshd, remote_dir, runs=10**7)  # minutes: only the interrupt ends it
    cmd = [sys.executable, "-m", "edgeprune.cli", "profile", str(tiny_onnx[1]), "--device", str(toml), "--known-hosts",
           str(sshd.known_hosts), "--no-op-profile", "--seq-lengths", "8", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"},
                            preexec_fn=terminal_sigint)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "on 127.0.0.1" in line:  # the measurement runs on the device
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted; nothing was written" in rest
    assert not (tmp_path / "out").exists()
    assert not list((remote_dir / "runs").iterdir()) and not _processes_under(remote_dir)


# --- the device profile and the runner file -----------------------------------------------------------------------------


def test_device_profile_names_its_remote_and_local_emulates_it(tmp_path, tiny_onnx):
    path = tmp_path / "pi.toml"
    path.write_text('name = "pi"\nruns = 2\nwarmup = 1\nremote = "ssh://pi@raspberrypi.local:2222"\nremote_python = "/opt/py/bin/python3"\n'
                    'identity = "~/.ssh/id_pi"\n')
    device = load_device(path)
    assert (device.remote, device.remote_python, device.identity, device.remote_dir) == \
        ("ssh://pi@raspberrypi.local:2222", "/opt/py/bin/python3", "~/.ssh/id_pi", "~/.cache/edgeprune-remote")
    # --local: the same profile, measured here; ssh is never called (the device does not exist)
    result = runner.invoke(app, ["profile", str(tiny_onnx[1]), "--device", str(path), "--local", "--no-op-profile",
                                 "--seq-lengths", "8", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["variants"][0]["remote"] == {} and data["variants"][0]["runs"][0]["status"] == "ok"
    assert "measured on this host" in result.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert "--local measures on this host only" in _cli([str(tiny_onnx[1]), "--device", str(path), "--local", "--also-local"], elsewhere)


def test_the_runner_is_one_self_contained_file():
    """worker.py is what a device runs: Python 3.9 syntax, and nothing but the standard library, numpy and onnxruntime
    (onnxruntime_genai only in the genai backend's measurement, which runs on this host)."""
    from edgeprune.profiling import worker

    source = Path(worker.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 9))

    def imports(root) -> set[str]:
        out = {alias.name.split(".")[0] for node in ast.walk(root) if isinstance(node, ast.Import) for alias in node.names}
        return out | {node.module.split(".")[0] for node in ast.walk(root) if isinstance(node, ast.ImportFrom) and node.module}

    genai = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "_run_genai")
    outside = ast.Module(body=[node for node in tree.body if node is not genai], type_ignores=[])
    assert imports(outside) - set(sys.stdlib_module_names) == {"numpy", "onnxruntime"}
    assert imports(genai) - set(sys.stdlib_module_names) == {"numpy", "onnxruntime_genai"}
    top = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    assert top <= {"json", "os", "resource", "sys", "time"}  # what the measuring child loads before numpy and ORT
