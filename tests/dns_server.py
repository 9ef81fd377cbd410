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
from collections.abc import Callable, Sequence
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

    def __init__(self, records: Records, extra: Sequence[str] = (), log: bool = False) -> None:
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
        self.log = self.dir / "queries.log" if log else None
        if self.log is not None:
            lines += ["log-queries", f"log-facility={self.log}"]
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

    def queries(self) -> int:
        """How many queries reached the server (with `log`)."""
        assert self.log is not None, "start the server with log=True"
        if not self.log.exists():
            return 0
        return sum(" query[" in line for line in self.log.read_text().splitlines())

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


class ZoneServer:
    """An attacker's authoritative server on 127.0.0.1 (UDP and TCP, EDNS0,
    truncation over UDP like any server): TXT answers from `answer(name)`
    (None: NXDOMAIN), for records dnsmasq cannot hold (a 16384-bit key is
    more than a dnsmasq configuration line takes). Counts every query."""

    def __init__(self, answer: Callable[[str], str | None]) -> None:
        import threading

        self.answer = answer
        self.count = 0
        self.port = free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(16)
        self.running = True
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    def queries(self) -> int:
        return self.count

    def _reply(self, wire: bytes, limit: int | None) -> bytes:
        import dns.exception
        import dns.message
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype
        import dns.rrset

        query = dns.message.from_wire(wire)
        self.count += 1
        response = dns.message.make_response(query)
        question = query.question[0]
        text = self.answer(question.name.to_text(omit_final_dot=True).lower())
        if text is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            data = text.encode("latin-1")
            strings = " ".join(
                '"' + data[i : i + 255].decode("latin-1") + '"' for i in range(0, len(data), 255)
            )
            txt = dns.rdatatype.TXT
            response.answer.append(
                dns.rrset.from_text(question.name, 60, dns.rdataclass.IN, txt, strings)
            )
        if limit is None:
            return response.to_wire(max_size=65535)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer = []
            response.flags |= 0x0200  # TC: ask again over TCP
            return response.to_wire()

    def _serve_udp(self) -> None:
        import dns.message

        while self.running:
            try:
                wire, peer = self.udp.recvfrom(65535)
            except OSError:
                return
            try:
                query = dns.message.from_wire(wire)
                limit = max(512, query.payload) if query.edns >= 0 else 512
                self.udp.sendto(self._reply(wire, limit), peer)
            except Exception:  # noqa: S112 - a test server: skip what it cannot read
                continue

    def _serve_tcp(self) -> None:
        import struct

        while self.running:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                try:
                    size = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))[0]
                    reply = self._reply(conn.recv(size, socket.MSG_WAITALL), None)
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except Exception:  # noqa: S112 - a test server
                    continue

    def config_yaml(self) -> str:
        return f"dns:\n  nameservers: [127.0.0.1]\n  port: {self.port}\n"

    def stop(self) -> None:
        self.running = False
        self.udp.close()
        self.tcp.close()
