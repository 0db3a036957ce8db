"""Serving: ``influence-explorer app`` listens on 127.0.0.1 only unless ``--address`` says otherwise,
warns (one line on stderr) that the app has no authentication when it does, prints no Network URL
and keeps tracebacks out of the browser (``client.showErrorDetails = none``).

The servers are real (``influence-explorer app --headless`` in a subprocess); what they listen on
is read from the kernel's socket tables (``/proc/net/tcp`` and ``tcp6``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from precompute import cli

ROOT = Path(__file__).resolve().parent.parent
LISTEN = "0A"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on ``port`` (IPv4 dotted, IPv6 as '::'-ish hex)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].rsplit(":", 1)
            if int(hexport, 16) != port or fields[3] != LISTEN:
                continue
            if len(addr) == 8:  # IPv4, little-endian
                out.add(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
            else:
                out.add("::" if set(addr) == {"0"} else f"ipv6:{addr}")
    return out


def _command() -> list[str]:
    script = Path(sys.executable).parent / "influence-explorer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "precompute.cli"]


@contextmanager
def _app(tmp_path: Path, *extra: str) -> Iterator[tuple[int, Path, Path]]:
    """``influence-explorer app --headless`` on a free port over an empty cache folder; yields
    (port, stdout file, stderr file) once something listens on the port."""
    port = _free_port()
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    (tmp_path / "cache").mkdir(exist_ok=True)
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([*_command(), "app", "--headless", "--port", str(port), "--cache-dir",
                                 str(tmp_path / "cache"), *extra], cwd=tmp_path, stdout=fo, stderr=fe,
                                env={**os.environ, "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"})
        try:
            deadline = time.time() + 60
            while not _listening(port) or "URL:" not in out.read_text():
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the app did not start: {out.read_text()[-2000:]} {err.read_text()[-2000:]}")
                time.sleep(0.2)
            yield port, out, err
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def test_app_listens_on_loopback_only_by_default(tmp_path: Path):
    with _app(tmp_path) as (port, out, err):
        assert _listening(port) == {"127.0.0.1"}
        printed = out.read_text()
        assert f"URL: http://127.0.0.1:{port}" in printed
        assert "Network URL" not in printed and "External URL" not in printed
        assert "warning" not in err.read_text().lower()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # reachable here


def test_address_opts_in_to_every_interface_with_a_one_line_warning(tmp_path: Path):
    with _app(tmp_path, "--address", "0.0.0.0") as (port, _out, err):
        assert "0.0.0.0" in _listening(port)
        warnings = [line for line in err.read_text().splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1, err.read_text()
        assert "no authentication" in warnings[0] and f"0.0.0.0:{port}" in warnings[0]
        assert "reverse proxy" in warnings[0] and "SSH tunnel" in warnings[0]


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                               ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                               ("::", False), ("192.168.1.5", False), ("example.org", False)])
def test_only_loopback_addresses_skip_the_warning(host: str, loopback: bool):
    assert cli._is_loopback(host) is loopback


def test_app_turns_off_error_details_and_passes_the_address(monkeypatch, tmp_path: Path, capsys):
    """What ``influence-explorer app`` hands to ``streamlit run`` (Streamlit itself is not started)."""
    from streamlit.web import cli as st_cli

    seen: list[list[str]] = []
    monkeypatch.setattr(st_cli, "main", lambda: seen.append(list(sys.argv)) or 0)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert cli.main(["app", "--cache-dir", str(tmp_path), "--port", "9999"]) == 0
    argv = seen[-1]

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert flag("--server.address") == "127.0.0.1" and flag("--server.port") == "9999"
    assert flag("--client.showErrorDetails") == "none"  # not even the exception type reaches the browser
    assert flag("--browser.gatherUsageStats") == "false"
    assert capsys.readouterr().err == ""
    assert cli.main(["app", "--cache-dir", str(tmp_path), "--address", "10.0.0.7"]) == 0
    assert seen[-1][seen[-1].index("--server.address") + 1] == "10.0.0.7"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: the explorer has no authentication")


def test_make_app_serves_loopback():
    """``make demo`` / ``make app`` go through ``influence-explorer app`` with ``--address 127.0.0.1``."""
    res = subprocess.run(["make", "-n", "app", "VENV=.venv", "STAMP=/dev/null"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    line = [x for x in res.stdout.splitlines() if "influence-explorer app" in x]
    assert line and "--address 127.0.0.1" in line[0], res.stdout + res.stderr
