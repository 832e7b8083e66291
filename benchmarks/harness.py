"""The benchmarks' harness: the machine and statistics, a server, the CLI and a planner process.

``grow_ledger.py`` builds on it (manifests, a grown ledger); the benchmark scripts use
both. Run by hand, never as tests. What each part does is in ``grow_ledger.py``'s docstring.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from ledger.embedded import TemporaryServer, create_database, libpq_url, migrate, start_temporary_server  # noqa: E402

ADMIN = "bench-admin"
_FAST = ("fsync", "synchronous_commit", "full_page_writes")


# ---------------------------------------------------------------- machine and statistics


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def machine(title: str) -> None:
    """Print what the numbers are worth: the machine, its load, the code."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    if not commit and (ROOT / "COMMIT").exists():  # a `git archive` snapshot of the code under test
        commit, dirty = f"{(ROOT / 'COMMIT').read_text().strip()} (snapshot in {ROOT})", ""
    one, five, fifteen = load()
    print(f"# {title}")
    local = " (+local changes)" if dirty else ""
    print(f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} | commit {commit}{local}")
    print(f"machine: nproc={os.cpu_count()} | {cpu_model()} | {platform.platform()} | "
          f"python {platform.python_version()}")  # fmt: skip
    print(f"load average at start: {one:.2f} {five:.2f} {fifteen:.2f}{load_note(one)}", flush=True)


def load_note(one: float) -> str:
    cpus = os.cpu_count() or 1
    return f"  (HIGH: above {cpus} runnable on {cpus} cores; numbers inflated)" if one > cpus else ""


def stats(samples: Sequence[float]) -> tuple[float, float, float]:
    return min(samples), statistics.median(samples), max(samples)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def row(label: str, samples: Sequence[float], base: Sequence[float] | None = None, target: float | None = None) -> str:
    """``| label | n | min | median | max | ratio to base median | target |`` (a Markdown row)."""
    lo, mid, hi = stats(samples)
    ratio = f"{mid / statistics.median(base):.1f}x" if base else "—"
    verdict = "—"
    if target is not None:
        verdict = f"<= {ms(target)}: " + ("met" if mid <= target else f"MISSED ({mid / target:.1f}x)")
    return f"| {label} | {len(samples)} | {ms(lo)} | **{ms(mid)}** | {ms(hi)} | {ratio} | {verdict} |"


HEADER = "| what | n | min | median | max | x baseline | target |\n|---|---|---|---|---|---|---|"


# ---------------------------------------------------------------- server and databases


@dataclass
class BenchServer:
    """An embedded server in a short temporary directory with a migrated template database."""

    durable: bool = False
    parent: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="jtb-", dir="/tmp")))
    server: TemporaryServer | None = None
    template: str = "bench_template"
    count: int = 0

    def __enter__(self) -> BenchServer:
        self.server = start_temporary_server(self.parent / "pg")
        if not self.durable:
            with psycopg.connect(libpq_url(self.server.url), autocommit=True) as conn:
                for setting in _FAST:
                    conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
                conn.execute("SELECT pg_reload_conf()")
        create_database(self.server.url, self.template)
        migrate(self.server.database_url(self.template))
        fast = "OFF (fsync, synchronous_commit, full_page_writes off, as tests/conftest.py)"
        durability = "ON" if self.durable else fast
        print(f"postgres: embedded, {self.parent}, durability {durability}", flush=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.parent, ignore_errors=True)

    def fresh(self, name: str | None = None) -> str:
        """A new migrated database (cloned from the template); its SQLAlchemy URL."""
        assert self.server is not None
        self.count += 1
        name = name or f"bench_{self.count}"
        create_database(self.server.url, name, template=self.template)
        return self.server.database_url(name)

    def drop(self, url: str) -> None:
        assert self.server is not None
        name = url.split("/")[-1].split("?")[0]
        with psycopg.connect(libpq_url(self.server.url), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_url(url), autocommit=True)


# ---------------------------------------------------------------- processes


def child_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(JOBTREE_USER=ADMIN, JOBTREE_HOME=str(home), JOBTREE_PLANNER_TIMEOUT="300")
    env.pop("JOBTREE_GROUPS", None)
    return env


class CommandFailed(RuntimeError):
    pass


def cli(url: str, *args: str, stdin: str | None = None, home: Path | None = None,
        check: bool = True) -> tuple[float, str]:  # fmt: skip
    """Run ``python -m cli.main ARGS --db URL`` as a user would; (seconds, stdout)."""
    home = home or Path(tempfile.gettempdir()) / "jtb-home"
    command = [sys.executable, "-m", "cli.main", *args, "--db", url]
    started = time.perf_counter()
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=ROOT, env=child_env(home),
                          check=False, timeout=900)  # fmt: skip
    elapsed = time.perf_counter() - started
    if check and done.returncode != 0:
        raise CommandFailed(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def timed_process(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, cwd=ROOT, check=True)
    return time.perf_counter() - started


class PlannerProcess:
    """``jobtree up --db URL`` in its own process; stopped (SIGTERM, then SIGKILL) by ``stop``."""

    def __init__(self, url: str, clock: str = "simulated", name: str = "bench-planner",
                 home: Path | None = None, log: Path | None = None, profile: Path | None = None) -> None:  # fmt: skip
        self.url, self.clock, self.name, self.profile = url, clock, name, profile
        self.home = home or Path(tempfile.gettempdir()) / "jtb-home"
        self.log = log or Path(tempfile.mkstemp(prefix="jtb-up-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> PlannerProcess:
        profiler = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        command = [sys.executable, *profiler, "-m", "cli.main", "up", "--db", self.url, "--clock", self.clock,
                   "--name", self.name, "--interval", "1"]  # fmt: skip
        out = self.log.open("ab")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(self.home))
        out.close()
        return self

    def wait_serving(self, since: datetime | None = None, timeout: float = 600.0) -> float:
        """Seconds from ``start`` until this process published its first ``planner_status``."""
        since = since or datetime.now(UTC) - timedelta(seconds=0)
        deadline = time.monotonic() + timeout
        with connect(self.url) as conn:
            while time.monotonic() < deadline:
                found = conn.execute("SELECT heartbeat FROM planner_status WHERE leader = %s AND heartbeat >= %s",
                                     (self.name, since)).fetchone()  # fmt: skip
                if found is not None:
                    return time.perf_counter() - self.started
                if self.proc is not None and self.proc.poll() is not None:
                    raise CommandFailed(f"jobtree up exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
                time.sleep(0.005)
        raise CommandFailed(f"jobtree up published no status in {timeout} s: {self.log.read_text()[-3000:]}")

    def rss(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the planner process in MB."""
        assert self.proc is not None
        values: dict[str, float] = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> PlannerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass
class Baseline:
    """Floor costs on the same machine and server, sampled between measured commands."""

    url: str
    python: list[float] = field(default_factory=list)
    help: list[float] = field(default_factory=list)
    insert: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = psycopg.connect(libpq_url(self.url))
        self.conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, data jsonb NOT NULL)")
        self.conn.commit()

    def sample(self) -> None:
        self.python.append(timed_process([sys.executable, "-c", "pass"]))
        self.help.append(timed_process([sys.executable, "-m", "cli.main", "--help"]))
        started = time.perf_counter()
        self.conn.execute("INSERT INTO bench_raw (data) VALUES (%s)", ('{"type": "RunSubmitted"}',))
        self.conn.commit()
        self.insert.append(time.perf_counter() - started)

    def rows(self) -> list[str]:
        return [
            row("baseline: `python -c pass`", self.python),
            row("baseline: `jobtree --help` (`python -m cli.main --help`)", self.help, self.python, 0.300),
            row("baseline: raw psycopg INSERT + COMMIT", self.insert),
        ]

    def close(self) -> None:
        self.conn.close()
