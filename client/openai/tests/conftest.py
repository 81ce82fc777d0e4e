# SPDX-License-Identifier: Apache-2.0
"""Fixtures: a residentd (null generator, temp socket) and resident-openai
gateways on free loopback ports, started and stopped per test module;
model_daemon starts residentd with a generator that loads a model."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest

BUILD = os.environ["RESIDENT_BUILD_ROOT"]
RESIDENTD = os.path.join(BUILD, "daemon", "residentd")
GATEWAY = os.path.join(BUILD, "client", "openai", "resident-openai")
# The bundled model (real architecture and tokenizer, random weights).
MODEL_DIR = os.path.join(os.environ["RESIDENT_SOURCE_ROOT"], "tests", "data", "default-model")
MODEL = "Qwen/Qwen3.6-35B-A3B"
# Limits the tests rely on (residentd -o ...).
MAX_PROMPT_TOKENS = 2048
MAX_NEW_TOKENS = 1_000_000


def wait_for_socket(proc, sock, log, what, timeout, poll=0.02):
    """Until the daemon `proc` creates `sock`; when it exits or `timeout`
    seconds pass first, raise with its log (`log`, the file it writes)."""
    deadline = time.time() + timeout
    while not os.path.exists(sock):
        if proc.poll() is not None or time.time() > deadline:
            log.seek(0)
            raise RuntimeError(f"{what} did not start:\n" + log.read())
        time.sleep(poll)


class Daemon:
    def __init__(self, tmp):
        self.sock = os.path.join(tmp, "residentd.sock")
        self.log = open(os.path.join(tmp, "residentd.log"), "w+")
        self.proc = subprocess.Popen(
            [RESIDENTD, "--socket", self.sock, "--generator", "null",
             "-o", f"max_prompt_tokens={MAX_PROMPT_TOKENS}",
             "-o", f"max_new_tokens={MAX_NEW_TOKENS}",
             # several MAX_NEW_TOKENS streams are held at once, all of this uid
             "-o", f"max_new_tokens_per_uid={64 * MAX_NEW_TOKENS}",
             "-o", "slow_client_ms=60000",
             # a test daemon, often root in CI: no drop to the service user
             "-o", "privileges=keep",
             "-o", f"allow_uids={os.getuid()}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_socket(self.proc, self.sock, self.log, "residentd", 10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class ModelDaemon:
    """residentd (or the test daemon residentd-script) with a generator that
    loads a model: --config /dev/null, socket tmp/GENERATOR.sock, log
    tmp/residentd-GENERATOR.log, this uid allowed, `options` as further
    "-o key=value" and `env` added to the environment. Always
    `-o privileges=keep`: started by hand as root, the default (privileges =
    auto) would drop to the `residentd` user, which a test host lacks."""

    def __init__(self, tmp, exe, generator, model_dir, *options, env=None,
                 start_timeout, stop_timeout):
        self.sock = os.path.join(tmp, generator + ".sock")
        self.stop_timeout = stop_timeout
        self.log = open(os.path.join(tmp, f"residentd-{generator}.log"), "w+")
        argv = [exe, "--config", "/dev/null", "--socket", self.sock, "--generator", generator,
                "--model", model_dir, "-o", f"allow_uids={os.getuid()}", "-o", "privileges=keep"]
        for o in options:
            argv += ["-o", o]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **env) if env else None)
        wait_for_socket(self.proc, self.sock, self.log,
                        f"{os.path.basename(exe)} ({generator})", start_timeout)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(self.stop_timeout)
        self.log.close()


class Gateway:
    """resident-openai on 127.0.0.1:<free port> and a Unix socket."""

    def __init__(self, tmp, daemon_sock, *extra, name="gw"):
        self.unix = os.path.join(tmp, name + ".sock")
        self.logpath = os.path.join(tmp, name + ".log")
        self.errlog = open(self.logpath, "w+")
        self.proc = subprocess.Popen(
            [GATEWAY, "--socket", daemon_sock, "--listen", "127.0.0.1:0",
             "--listen", "unix:" + self.unix, *extra],
            stdout=subprocess.PIPE, stderr=self.errlog, text=True)
        self.port = None
        deadline = time.time() + 10
        seen = 0
        while seen < 2:
            line = self.proc.stdout.readline()
            if not line:
                self.errlog.seek(0)
                raise RuntimeError("resident-openai did not start:\n" + self.errlog.read())
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if "listening on" in line:
                seen += 1
            if time.time() > deadline:
                raise RuntimeError("resident-openai: no listening line")
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def client(self, **kw):
        """An openai.OpenAI for this gateway (no retries: every status is
        checked as sent). Building one costs ~0.1 s (TLS setup), so the
        default one is kept."""
        import openai
        if not kw:
            if getattr(self, "_client", None) is None:
                self._client = self.client(api_key="unused")
            return self._client
        kw.setdefault("api_key", "unused")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30)
        return openai.OpenAI(base_url=self.base_url, **kw)

    def request(self, method, path, body=None, headers=None, unix=False):
        """Raw HTTP: (status, headers, body bytes)."""
        if unix:
            conn = UnixHTTPConnection(self.unix)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, dict(r.getheaders()), data

    def metrics(self):
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
        return out

    def stop(self):
        """SIGTERM; a clean exit is part of the test (sanitizer builds
        report leaks and errors through the exit status)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("resident-openai did not stop within 10 s of SIGTERM")
        self.proc.stdout.close()
        self.errlog.seek(0)
        log = self.errlog.read()
        self.errlog.close()
        if self.proc.returncode != 0:
            raise RuntimeError(f"resident-openai exited with {self.proc.returncode}:\n{log}")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.unix_path)
        self.sock = s


@pytest.fixture(scope="module")
def tmp():
    with tempfile.TemporaryDirectory(prefix="resident-openai-") as d:
        yield d


@pytest.fixture(scope="module")
def daemon(tmp):
    d = Daemon(tmp)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def model_daemon(tmp):
    """start(exe, generator, model_dir, *options, env=..., start_timeout=...,
    stop_timeout=...) -> a started ModelDaemon, stopped (SIGTERM,
    then waiting stop_timeout s for its exit) at the end of the module, after
    the fixtures that use it."""
    started = []

    def start(*args, **kw):
        d = ModelDaemon(tmp, *args, **kw)
        started.append(d)
        return d
    yield start
    for d in reversed(started):
        d.stop()


@pytest.fixture(scope="module")
def gw(tmp, daemon):
    g = Gateway(tmp, daemon.sock, "--max-concurrent", "8", "--max-body-bytes", "65536")
    yield g
    g.stop()


@pytest.fixture
def make_gateway(tmp, daemon):
    made = []

    def make(*extra, sock=None, name="gw2"):
        g = Gateway(tmp, sock or daemon.sock, *extra, name=f"{name}{len(made)}")
        made.append(g)
        return g
    yield make
    for g in made:
        g.stop()
