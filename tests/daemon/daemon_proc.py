"""A `probe run` subprocess for the metrics tests (test_metrics.py, test_prometheus.py):
start it on a config, find its HTTP port from the log's `listening` event, GET pages,
parse the Prometheus text. Only 127.0.0.1 is ever connected to."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from helpers import probe_cmd

T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# urllib must not send 127.0.0.1 requests through an http_proxy from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, str, str]:
    """(status, content type, body) of GET url."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _http.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> Samples:
    """Samples of a Prometheus text exposition: (name, labels) -> value."""
    out: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"not a sample line: {line!r}"
        out[(m[1], frozenset(_LABEL.findall(m[2] or "")))] = float(m[3])
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def with_label(samples: Samples, name: str, label: str, val: str) -> dict[frozenset[Any], float]:
    """Every sample of `name` whose `label` is `val`."""
    return {labels: v for (n, labels), v in samples.items() if n == name and (label, val) in labels}


def target_toml(name: str, address: str, labels: Mapping[str, str] | None = None) -> str:
    text = f'[[targets]]\naddress = "{address}"\nname = "{name}"\n'
    if labels:
        inner = ", ".join(f'{k} = "{v}"' for k, v in labels.items())
        text += f"labels = {{ {inner} }}\n"
    return text


def config_toml(
    targets: str, log: Path, interval: float = 0.2, timeout: float = 0.3, extra: str = ""
) -> str:
    return (
        f"[defaults]\ninterval = {interval}\ntimeout = {timeout}\n\n"
        f'[log]\nformat = "json"\nfile = {json.dumps(str(log))}\n\n'
        f'[metrics]\nlisten = "127.0.0.1:0"\n{extra}\n' + targets
    )


@dataclass
class Proc:
    dir: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes]
    port: int = 0

    @classmethod
    def start(
        cls,
        dir: Path,
        text: str,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        """`probe run --config DIR/config.toml ARGS`; the config's log must be DIR/probe.log."""
        dir.mkdir(parents=True, exist_ok=True)
        config = dir / "config.toml"
        config.write_text(text)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PROBE_SHARD")} | dict(
            env or {}
        )
        with (dir / "stdout").open("wb") as out, (dir / "stderr").open("wb") as err:
            proc = subprocess.Popen(
                [*probe_cmd(), "run", "--config", str(config), *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=dir,
                env=environ,
            )
        return cls(dir, config, dir / "probe.log", proc)

    @property
    def stderr(self) -> str:
        return (self.dir / "stderr").read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        try:
            data = self.log.read_bytes()
        except FileNotFoundError:
            return []
        return [json.loads(raw) for raw in data.split(b"\n")[:-1]]

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = 10.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited {self.proc.returncode} waiting for {what}: {self.stderr!r}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((ln for ln in self.lines() if ln.get("event") == name), None)

        return self.wait(f"event {name}", found, timeout)

    def listening(self) -> int:
        if not self.port:
            self.port = int(self.event("listening")["address"].rpartition(":")[2])
        return self.port

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, str, str]:
        return http_get(f"http://127.0.0.1:{self.listening()}{path}", headers)

    def metrics(self) -> tuple[str, Samples]:
        status, _, body = self.get("/metrics")
        assert status == 200, body
        return body, parse_prometheus(body)

    def records(self, name: str) -> list[dict[str, Any]]:
        return [ln for ln in self.lines() if ln.get("event") == "probe" and ln.get("name") == name]

    def rewrite(self, text: str) -> None:
        tmp = self.config.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, self.config)

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def run_probe(*args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PROBE_SHARD")}
    return subprocess.run(
        [*probe_cmd(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=environ | dict(env or {}),
    )
