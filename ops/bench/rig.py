"""What the benchmark starts on loopback: the upstream, its own Redis, and the targets in front of them.

Every process is registered with the caller's ExitStack, so it is stopped at the end, on Ctrl-C and on
errors alike.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import string
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import redis

from procs import cpu_seconds, free_port, spawn, stop, wait_ready
from upstream import BODY

HERE = Path(__file__).resolve().parent
REQUEST_PATH = "/api/v1/users/profile"
RATELIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
# Lua calls a limiter decision may arrive as; EVALSHA is the usual one.
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")


def which(tool: str) -> str | None:
    # nginx lives in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin")


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None  # None for direct: no proxy process to measure
    cores: int = 1  # cores the proxy may use, for its busy share
    headers: dict[str, str] = field(default_factory=dict)
    redis: BenchRedis | None = None  # the Redis its limiter calls, measured alongside it
    runs: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mib: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{REQUEST_PATH}"


@dataclass
class BenchRedis:
    """The bench's own redis-server: no persistence, pinned to the load core, its CPU read from /proc."""

    proc: subprocess.Popen[bytes]
    port: int
    client: redis.Redis

    def sample(self) -> tuple[float, int]:
        """(CPU seconds so far, Lua script calls so far)."""
        stats = self.client.info("commandstats")
        calls = sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in SCRIPT_COMMANDS)
        return cpu_seconds(self.proc.pid), calls

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])


class Rig:
    """Starts processes into tmp, pinned: targets on proxy_cpus, upstream and Redis on load_cpus."""

    def __init__(self, stack: contextlib.ExitStack, tmp: Path, proxy_cpus: str, load_cpus: str) -> None:
        self.stack, self.tmp, self.proxy_cpus, self.load_cpus = stack, tmp, proxy_cpus, load_cpus
        self.secret = secrets.token_urlsafe(48)  # production mode wants 32+ characters, not the dev secret
        self.redis: BenchRedis | None = None
        self.upstream_port = 0
        self.upstream_label = ""
        self._pending: list[tuple[Target, Path]] = []

    def _spawn(self, name: str, cmd: list[str], cpus: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = spawn(cmd, cpus, self.tmp / f"{name}.log", env)
        self.stack.callback(stop, proc)
        return proc

    def _template(self, name: str, **values: object) -> str:
        return string.Template((HERE / name).read_text()).substitute(values)

    def start_upstream(self) -> None:
        """nginx when installed (it costs the shared core least), else ops/bench/upstream.py."""
        port, nginx = free_port(), which("nginx")
        if nginx:
            (self.tmp / "upstream.conf").write_text(self._template("nginx.conf", dir=self.tmp, port=port, body=BODY))
            # -e: nginx opens its default error log before reading the config, which fails without root.
            cmd = [nginx, "-p", str(self.tmp), "-e", str(self.tmp / "upstream.log"),
                   "-c", str(self.tmp / "upstream.conf")]
            label = "nginx"
        else:
            cmd = [sys.executable, str(HERE / "upstream.py"), "--port", str(port)]
            label = "aiohttp (ops/bench/upstream.py; nginx not installed)"
        proc = self._spawn("upstream", cmd, self.load_cpus)
        wait_ready("upstream", f"http://127.0.0.1:{port}{REQUEST_PATH}", proc, self.tmp / "upstream.log", BODY.encode())
        self.upstream_port, self.upstream_label = port, label

    def start_redis(self) -> BenchRedis:
        server = which("redis-server")
        if not server:
            sys.exit("bench: redis-server not found; gateway-full needs a Redis of its own. On Debian/Ubuntu: "
                     "sudo apt-get install redis-server (ops/bench/run installs it when run as root)")
        port = free_port()
        cmd = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
               "--dir", str(self.tmp), "--daemonize", "no", "--logfile", str(self.tmp / "redis-server.log")]
        proc = self._spawn("redis", cmd, self.load_cpus)
        client = redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=1)
        self.stack.callback(client.close)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    logs = [path.read_text(errors="replace") for path in self.tmp.glob("redis*.log")]
                    sys.exit("bench: redis-server did not start:\n" + "".join(logs)[-2000:])
                time.sleep(0.05)
        self.redis = BenchRedis(proc, port, client)
        return self.redis

    def gateway_env(self) -> dict[str, str]:
        """Production settings; nothing inherited from the shell may change the gateway's behaviour."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("KADAI_", "JWT_", "PROMETHEUS_")) and key not in ("REDIS_URL", "AMQP_URL")}
        env |= {"KADAI_ENV": "production", "JWT_SECRET": self.secret, "LOG_LEVEL": "INFO",
                "KADAI_DRAIN_TIMEOUT": "2s"}
        if self.redis:
            env["REDIS_URL"] = f"redis://127.0.0.1:{self.redis.port}/0"
        return env

    def token(self) -> str:
        now = int(time.time())
        claims = {"sub": "bench-user", "role": "customer", "iat": now, "exp": now + 7 * 86400}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def add(self, name: str, cmd: list[str], *, port: int | None = None, cpus: str | None = None,
            env: dict[str, str] | None = None, headers: dict[str, str] | None = None,
            wrap: Callable[[list[str]], list[str]] | None = None) -> Target:
        """Start a proxy target listening on port ("$port" in cmd); ready() waits for all of them. wrap
        puts a command in front of it (valgrind)."""
        port = port or free_port()
        cpus = cpus or self.proxy_cpus
        cmd = [part.replace("$port", str(port)) for part in cmd]
        proc = self._spawn(name, wrap(cmd) if wrap else cmd, cpus, env)
        target = Target(name, port, proc, cores=len(cpus.split(",")), headers=headers or {})
        self._pending.append((target, self.tmp / f"{name}.log"))
        return target

    def add_naive(self, wrap: Callable[[list[str]], list[str]] | None = None) -> Target:
        return self.add("naive", [sys.executable, str(HERE / "naive_proxy.py"), "--port", "$port",
                                  "--upstream", f"http://127.0.0.1:{self.upstream_port}"], wrap=wrap)

    def add_floor(self, wrap: Callable[[list[str]], list[str]] | None = None) -> Target:
        return self.add("floor", [sys.executable, str(HERE / "floor_proxy.py"), "--port", "$port",
                                  "--upstream", f"http://127.0.0.1:{self.upstream_port}"], wrap=wrap)

    def add_gateway(self, name: str, registry: str, *, workers: int = 1, cpus: str | None = None,
                    wrap: Callable[[list[str]], list[str]] | None = None) -> Target:
        """The gateway on registries/<registry>.yaml; the full chain gets a token and the bench's Redis."""
        path = self.tmp / f"{name}.yaml"
        path.write_text(self._template(f"registries/{registry}.yaml", upstream_port=self.upstream_port))
        cmd = [sys.executable, "-m", "gateway", "gateway", "--workers", str(workers), "--registry", str(path),
               "--host", "127.0.0.1", "--port", "$port"]
        full = registry == "full"
        target = self.add(name, cmd, cpus=cpus, env=self.gateway_env(),
                          headers={"Authorization": f"Bearer {self.token()}"} if full else None, wrap=wrap)
        target.redis = self.redis if full else None
        return target

    def add_nginx_proxy(self) -> Target | None:
        if not (nginx := which("nginx")):
            return None
        conf_dir, port = self.tmp / "nginx-proxy", free_port()
        conf_dir.mkdir()
        conf = self._template("nginx-proxy.conf", dir=conf_dir, port=port, upstream_port=self.upstream_port)
        (conf_dir / "nginx.conf").write_text(conf)
        return self.add("nginx-proxy", [nginx, "-p", str(conf_dir), "-e", str(conf_dir / "nginx-proxy.log"),
                                        "-c", str(conf_dir / "nginx.conf")], port=port)

    def add_caddy_proxy(self) -> Target | None:
        if not (caddy := which("caddy")):
            return None
        home, port = self.tmp / "caddy", free_port()
        home.mkdir()
        (home / "Caddyfile").write_text(self._template("Caddyfile", port=port, upstream_port=self.upstream_port))
        # Caddy keeps state under HOME/XDG dirs: inside tmp, so nothing is left behind.
        env = dict(os.environ, GOMAXPROCS="1", HOME=str(home), XDG_DATA_HOME=str(home), XDG_CONFIG_HOME=str(home))
        return self.add("caddy-proxy", [caddy, "run", "--adapter", "caddyfile", "--config", str(home / "Caddyfile")],
                        port=port, env=env)

    def ready(self, timeout: float = 20.0) -> None:
        for target, log in self._pending:
            assert target.proc is not None
            wait_ready(target.name, target.url, target.proc, log, BODY.encode(), target.headers, timeout)
        self._pending.clear()


def get(url: str, headers: dict[str, str]) -> tuple[int, http.client.HTTPMessage, bytes]:
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=5)
    try:
        conn.request("GET", "/" + rest, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.headers, reply.read()
    finally:
        conn.close()


def limiter_skips(target: Target) -> float:
    """Requests the gateway has let through without a limiter decision so far (failed open or closed: Redis
    too slow or down), by its own /metrics. Such requests cost less and would flatter a row."""
    _, _, text = get(f"http://127.0.0.1:{target.port}/metrics", {})
    return sum(float(line.rpartition(" ")[2]) for line in text.decode().splitlines()
               if line.startswith("kadai_gateway_ratelimit_decisions_total{")
               and ('outcome="failed_open"' in line or 'outcome="failed_closed"' in line))


def verify_full_chain(target: Target) -> None:
    """Exit unless the target really runs the chain: limiter headers, a Redis call, 401 without a token."""
    assert target.redis is not None
    _, calls_before = target.redis.sample()
    for _ in range(10):  # the first limiter call opens the Redis connection; a slow one fails open for 500 ms
        status, headers, body = get(target.url, target.headers)
        if status != 200 or body != BODY.encode():
            sys.exit(f"bench: {target.name} answered {status} with the token, not the upstream's 200: {body[:300]!r}")
        if missing := [name for name in (*RATELIMIT_HEADERS, "X-Request-ID") if name not in headers]:
            time.sleep(0.2)
        else:
            break
    if missing:
        sys.exit(f"bench: {target.name} answered without {', '.join(missing)}: the rate limit (or request ID) "
                 "is not applied, or the limiter failed open")
    if target.redis.sample()[1] <= calls_before:
        sys.exit(f"bench: {target.name} made no Lua call to the bench's Redis: its limiter is not the one measured")
    status, _, _ = get(target.url, {})
    if status != 401:
        sys.exit(f"bench: {target.name} answered {status} to a request without a token, not 401: "
                 "the JWT check is not applied")
