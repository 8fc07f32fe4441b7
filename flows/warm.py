"""A warm process that runs `seqcast` commands, so that a command costs its own work and not Python's imports.

A cold `seqcast forecast` spends about 5 s importing prefect, torch, mlflow and pandas (great_expectations adds
3.5 s to `ingest`) and 4-8 s starting Prefect's temporary API, to write a few rows. So a command that finds no
warm server runs as it always did and, as it exits, starts one in the background (this module, `python -m
flows.warm`): it imports all of that once, starts one temporary Prefect API (flows/prefect_server.py), and
listens on a Unix socket. Each later command connects and passes its arguments, environment and working
folder, and its stdin, stdout and stderr themselves (the file descriptors, so terminals, progress bars, pipes and
redirections behave as in a cold command). The server forks a child that runs the command exactly as the CLI
would and reports its exit code. The server starts no thread, so every command is a fresh process that shares
only the imports and the Prefect API with the others.

- Ctrl-C, SIGTERM and SIGHUP on the command are passed on to its child; a command killed with SIGKILL closes its
  socket, and its child is killed with it.
- The server exits after SEQCAST_WARM_IDLE seconds (default 600) without a command, stopping its Prefect API.
  SEQCAST_WARM_IDLE=0 turns it off: each command then imports and starts everything itself.
- One server per Python environment (venv), seqcast code version and Prefect/OpenMP/MLflow variables (the
  settings read at import time; a file lock keeps a second one from starting beside it), so editing the code or
  pointing at another Prefect starts a fresh one; the old one idles out.
- Flows that a Prefect worker runs (deployments) never use it: it serves the `seqcast` command line only.

The client side imports nothing but the standard library (`seqcast --help` stays fast).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib
import io
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

IDLE_ENV = "SEQCAST_WARM_IDLE"
DEFAULT_IDLE = 600.0  # seconds; a working session's commands are minutes apart, a night's are hours apart
# the commands whose cost is mostly imports and Prefect's start; the others answer fast without a server
WARM_COMMANDS = frozenset({"ingest", "train", "tune", "forecast", "backfill", "monitor", "demo"})
# Environment every command sets unless given (before torch and mlflow are imported, which read them):
COMMAND_ENV_DEFAULTS = {
    # Prefect's temporary local server would otherwise try to send usage analytics on every command.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # OpenMP threads that spin while waiting cut RNN training 3-10x when the cores are shared (docs/benchmarks.md).
    "OMP_WAIT_POLICY": "PASSIVE",
    # MLflow's INFO lines (creating its tables, validating the input example) say nothing a user acts on.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}
# environment read when modules are imported (and the server's own), so a server only serves commands whose values
# match its own
SERVER_ENV_PREFIXES = ("PREFECT_", "OMP_", "MKL_", "MLFLOW_LOGGING", "PYTHON", "SEQCAST_WARM_")
# in this order: Prefect sets up logging when imported, and mlflow.pytorch calls logging.basicConfig when nothing has
WARM_MODULES = (
    "prefect.main",
    "flows.cli",
    "flows.console",
    "flows.train",
    "flows.tune",
    "flows.forecast",
    "flows.backfill",
    "flows.monitor",
    "flows.demo",
    "tasks.ingest",
    "tasks.validate",
    "great_expectations.expectations",
    "mlflow.pytorch",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    # imported on first use, which every command is: the engines, and what MLflow and Prefect import when running
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.artifacts",
    "prefect.concurrency.v1.sync",
    "prefect.telemetry.run_telemetry",
    "alembic.command",
    "alembic.config",
    "pyarrow.pandas_compat",
    "graphviz",
    "anyio._backends._asyncio",
    "mlflow.store.tracking.sqlalchemy_workspace_store",
    "mlflow.store.model_registry.sqlalchemy_workspace_store",
    "mlflow.tracing.processor.otel",
    "opentelemetry.sdk.metrics",
    "prefect.utilities.visualization",
    "torch.utils.serialization",
    "torch._dynamo",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "git",
    "mlflow.pyfunc.scoring_server",
    "mlflow.models.display_utils",
)
HEADER = struct.Struct("!I")
STARTED = b"A"  # child -> command: the command is running
EXIT = b"X"  # child -> command: followed by the exit code
SIGNAL = b"S"  # command -> child: followed by a signal number
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def warm_idle() -> float:
    """SEQCAST_WARM_IDLE as seconds (0: no warm server)."""
    raw = os.environ.get(IDLE_ENV, "")
    try:
        return max(float(raw), 0.0) if raw.strip() else DEFAULT_IDLE
    except ValueError:
        return DEFAULT_IDLE


def runs_warm(argv: Sequence[str]) -> bool:
    """Whether this command line goes to a warm server: a flow command, not a help request, warm server on."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    asks_help = any(arg in ("-h", "--help", "--version") for arg in argv)
    return command in WARM_COMMANDS and not asks_help and warm_idle() > 0 and sys.platform.startswith("linux")


def command_argv() -> list[str]:
    """The `seqcast` command of this interpreter's environment: its console script, else `python -m flows.cli`."""
    script = Path(sys.executable).with_name("seqcast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


def server_paths(env: Mapping[str, str] | None = None) -> tuple[Path, Path, Path]:
    """(socket, lock, log) of the warm server for this interpreter, code and import-time environment."""
    env = {**COMMAND_ENV_DEFAULTS, **(os.environ if env is None else env)}  # as `flows.cli.main` sets them
    code = Path(__file__).resolve().parent.parent
    stamp = [
        f"{p}:{p.stat().st_mtime_ns}:{p.stat().st_size}"
        for d in ("flows", "tasks", "models")
        for p in sorted((code / d).glob("*.py"))
    ]
    pinned = sorted((k, v) for k, v in env.items() if k.startswith(SERVER_ENV_PREFIXES))
    key = hashlib.sha256(json.dumps([sys.prefix, sys.version, str(code), stamp, pinned]).encode()).hexdigest()[:16]
    folder = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"seqcast-{os.getuid()}"  # noqa: S108 - 0700, owned
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise PermissionError(f"{folder} must belong to this user with mode 0700")
    return folder / f"{key}.sock", folder / f"{key}.lock", folder / f"{key}.log"


# ---------------------------------------------------------------------------------------------------------------
# the command's side


def run_warm(argv: Sequence[str]) -> int | None:
    """Run the command in the warm server's child; its exit code. None when no server is up (yet): the caller runs
    the command itself, and a server starts in the background when this process exits, for the next command."""
    try:
        sock = _connect(server_paths()[0])
    except OSError:
        # the environment as it is now: the command sets PREFECT_API_URL to its own temporary server
        atexit.register(start_warm_server, dict(os.environ))
        return None
    with sock:
        request = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        fds = [fd for fd in (0, 1, 2) if _is_open(fd)]
        try:
            socket.send_fds(sock, [HEADER.pack(len(request)) + request], fds)
            if sock.recv(1) != STARTED:
                return None  # the server was stopping as we connected
        except OSError:
            return None
        return _wait_for_exit(sock)


def start_warm_server(env: dict[str, str]) -> None:
    """Start the warm server for environment `env` in the background (it exits at once if one is up)."""
    path = server_paths(env)[0]
    process = subprocess.Popen(  # noqa: S603 - this interpreter, this module, fixed arguments
        [sys.executable, "-m", __name__, str(path), str(warm_idle())],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the terminal's process group: Ctrl-C is the commands' only
    )
    process.returncode = 0  # it outlives this process by design: no "still running" warning at exit


def _wait_for_exit(sock: socket.socket) -> int:
    forwarded: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        forwarded.append(signum)
        with contextlib.suppress(OSError):
            sock.sendall(SIGNAL + bytes([signum]))

    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        data = b""
        while True:
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
            if data.startswith(EXIT) and len(data) >= 1 + HEADER.size:
                return int(struct.unpack("!i", data[1 : 1 + HEADER.size])[0])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if forwarded:
        return 128 + forwarded[-1]
    print("error: the command's process ended without an exit code (killed?)", file=sys.stderr)
    return 1


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def stop_warm_server(env: dict[str, str] | None = None) -> bool:
    """Ask the warm server for this environment to exit now; whether one was running."""
    path = server_paths(env)[0]
    try:
        sock = _connect(path)
    except OSError:
        return False
    with sock:
        request = json.dumps({"stop": True}).encode()
        sock.sendall(HEADER.pack(len(request)) + request)
        sock.recv(1)  # closed once the server has stopped listening
    return True


# ---------------------------------------------------------------------------------------------------------------
# the server's side


def serve(path: Path, idle: float) -> None:
    """Import everything a command needs, start the temporary Prefect API, then fork a child per command until
    `idle` seconds pass without one (or a stop request comes)."""
    from flows import prefect_server

    lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - held for the server's life, closed with it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another server for this environment is starting or serving
    with open(path.with_suffix(".log"), "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    server_pid = os.getpid()
    prefect = prefect_server.start_server_for_settings()
    try:
        _import_everything()
        with _listening(path, server_pid) as listener:
            api = prefect.api_url if prefect else "from the settings"
            _log(f"serving on {path} (pid {server_pid}, Prefect API {api})")
            _accept_commands(listener, idle, lock.fileno())
    finally:
        if os.getpid() == server_pid:  # a command's child leaves through here too (sys.exit), touching nothing
            if prefect is not None:
                prefect.stop()
            _log("stopped")


def _import_everything() -> None:
    for name in WARM_MODULES:
        importlib.import_module(name)
    if threading.active_count() != 1:  # a fork copies only the forking thread: another thread's locks would hang
        raise RuntimeError(f"imports started threads: {[t.name for t in threading.enumerate()]}")


@contextlib.contextmanager
def _listening(path: Path, server_pid: int) -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(16)
    try:
        yield listener
    finally:
        listener.close()
        if os.getpid() == server_pid:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _accept_commands(listener: socket.socket, idle: float, lock_fd: int) -> None:
    children: set[int] = set()
    last = time.monotonic()
    while True:
        children -= _reaped(children)
        if children:
            last = time.monotonic()
        elif time.monotonic() - last > idle:
            _log(f"idle for {idle:g} s")
            return
        ready, _, _ = select.select([listener], [], [], 1.0)
        if not ready:
            continue
        conn, _ = listener.accept()
        try:
            request, fds = _read_request(conn)
        except (OSError, ValueError) as exc:
            _log(f"bad request: {exc}")
            conn.close()
            continue
        if request.get("stop"):
            _log("stop requested")
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            listener.close()
            os.close(lock_fd)  # a command outliving the server must not keep the next one from starting
            _run_child(conn, request, fds)  # never returns
        children.add(pid)
        _log(f"command {pid}: {' '.join(request['argv'])}")
        conn.close()
        for fd in fds:
            os.close(fd)
        last = time.monotonic()


def _reaped(children: set[int]) -> set[int]:
    done = set()
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                done.add(pid)
    return done


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    conn.settimeout(10)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < HEADER.size:
        raise ValueError("no header")
    size = HEADER.unpack(data[: HEADER.size])[0]
    body = data[HEADER.size :]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    conn.settimeout(None)
    return json.loads(body), list(fds)


def _run_child(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become the command (its stdio, folder, environment), run it, report its exit code."""
    code = 1
    finished = threading.Event()

    def report() -> None:  # registered first, so it runs last: after Prefect has sent its logs and events
        finished.set()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            conn.sendall(EXIT + struct.pack("!i", code))
        # and end here: tearing down the interpreter's inherited objects takes seconds, and this process holds the
        # command's stdout and stderr until it is gone (a pipe would stay open that long)
        os._exit(code)

    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for stream in (sys.stdout, sys.stderr):
            cast(io.TextIOWrapper, stream).reconfigure(line_buffering=stream.isatty())
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _use_warm_prefect_api()
        threading.Thread(target=_watch_command, args=(conn, finished), daemon=True).start()
        atexit.register(report)
        conn.sendall(STARTED)
        from flows.cli import main

        sys.argv = ["seqcast", *request["argv"]]
        code = main(request["argv"])
    except BaseException as exc:  # whatever happens, the command gets an exit code
        print(f"error: the warm server could not run the command: {exc!r}", file=sys.stderr)
        code = 1
    sys.exit(code)


def _use_warm_prefect_api() -> None:
    """Point the command at the warm server's Prefect API unless its own environment names one."""
    from prefect.context import refresh_global_settings_context

    from flows import prefect_server

    refresh_global_settings_context()
    server = prefect_server.started_server()
    if server is not None and "PREFECT_API_URL" not in os.environ:
        prefect_server.use_temporary_server(server)


def _watch_command(conn: socket.socket, finished: threading.Event) -> None:
    """Pass the command's signals on to this process; die with the command when its socket closes."""
    while True:
        try:
            data = conn.recv(2)
        except OSError:
            data = b""
        if not data:
            if not finished.is_set():
                os.kill(os.getpid(), signal.SIGKILL)
            return
        if data[:1] == SIGNAL and len(data) == 2:
            os.kill(os.getpid(), data[1])


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


if __name__ == "__main__":  # started by a command, with that command's environment (flows/cli.py's defaults set)
    serve(Path(sys.argv[1]), float(sys.argv[2]))
