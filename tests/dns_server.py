"""A real DNS server for the authentication tests: Debian's dnsmasq on
127.0.0.1 and a free port, serving exactly the TXT records a test gives it
(rig.md: --local for every domain so absent names are NXDOMAIN, long records
split into 255-byte character-strings)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"

Records = dict[str, "str | list[str]"]


def free_port() -> int:
    """A UDP port nothing listens on right now (dnsmasq binds UDP and TCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def _strings(value: str) -> str:
    """A TXT value as dnsmasq config strings: quoted, at most 255 bytes each."""
    data = value.encode("latin-1")
    if b'"' in data or b"\n" in data:
        raise ValueError(f"cannot serve a TXT value with a quote or newline: {value!r}")
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return ",".join('"' + c.decode("latin-1") + '"' for c in chunks)


class DnsServer:
    """dnsmasq serving `records` (name -> TXT value, or a list of values),
    plus `extra` dnsmasq lines (host-record=, mx-host=, cname=, ...) for
    names under the domains of `records`."""

    def __init__(self, records: Records, extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="quarantine-dns-"))
        domains: set[str] = set()
        lines = [
            f"port={self.port}",
            "listen-address=127.0.0.1",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-daemon",
        ]
        for name, values in records.items():
            name = name.rstrip(".").lower()
            for value in [values] if isinstance(values, str) else values:
                lines.append(f"txt-record={name},{_strings(value)}")
            labels = name.split(".")
            # The registered domain and every name listed are served locally.
            domains.add(".".join(labels[-2:]))
        lines += list(extra)
        lines += [f"local=/{domain}/" for domain in sorted(domains)]
        conf = self.dir / "dnsmasq.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [DNSMASQ, f"--conf-file={conf}", "--pid-file=", "--keep-in-foreground"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"dnsmasq exited {self.proc.returncode}: {err}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("dnsmasq did not start listening")

    def config_yaml(self) -> str:
        """The `dns` section pointing quarantine at this server."""
        return f"dns:\n  nameservers: [127.0.0.1]\n  port: {self.port}\n"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
