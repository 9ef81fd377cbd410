"""Real nameservers for the key roll-over tests (shared/reference/rig.md):
BIND 9 `named` in the foreground on 127.0.0.1 and a free port (or 53), its
zones updatable with a TSIG key,
and Debian's tinydns on 127.0.0.2 port 53 built from a `data` file with a
Makefile, as tinydns-conf sets one up. Stopped by PID, never by name."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from dns_server import free_port

NAMED = shutil.which("named") or "/usr/sbin/named"
TINYDNS = shutil.which("tinydns") or "/usr/sbin/tinydns"
TINYDNS_DATA = shutil.which("tinydns-data") or "/usr/sbin/tinydns-data"
TINYDNS_IP = "127.0.0.2"
SERIAL_WAIT = 30.0


def _dig(server: str, port: int, name: str, rtype: str) -> list[str]:
    proc = subprocess.run(
        ["dig", f"@{server}", "-p", str(port), rtype, name, "+short", "+norecurse", "+time=1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [line for line in proc.stdout.splitlines() if line and not line.startswith(";")]


def dig_txt(server: str, port: int, name: str) -> list[str]:
    """The TXT records at `name`, each with its strings joined."""
    out = []
    for line in _dig(server, port, name, "TXT"):
        parts = line.split('" "')
        out.append("".join(p.strip('"') for p in parts))
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


class Bind:
    """A primary named for `zones` on 127.0.0.1:`port` (a free one by
    default), each zone updatable with the TSIG key in `key_file`, with NS
    records for `nameservers` (name -> address; ns1 127.0.0.1 by default).
    (BIND listens only on addresses the host has, and lo has 127.0.0.1
    alone; a second nameserver on 127.0.0.2 is a tinydns, which binds any.)"""

    def __init__(
        self,
        zones: dict[str, list[str]],
        port: int | None = None,
        nameservers: dict[str, str] | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="quarantine-bind-"))
        self.port = port or free_port()
        self.zones = list(zones)
        self.key_file = self.dir / "upd.key"
        keygen = subprocess.run(
            ["tsig-keygen", "-a", "hmac-sha256", "upd"], capture_output=True, check=True
        )
        self.key_file.write_bytes(keygen.stdout)
        stanzas = []
        for zone, lines in zones.items():
            ns = []
            for host, address in (nameservers or {"ns1": "127.0.0.1"}).items():
                ns += [f"@ IN NS {host}.{zone}.", f"{host} IN A {address}"]
            body = [
                "$TTL 60",
                f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60",
                *ns,
                *lines,
            ]
            (self.dir / f"{zone}.zone").write_text("\n".join(body) + "\n")
            stanzas.append(
                f'zone "{zone}" {{ type primary; file "{zone}.zone"; '
                "allow-update { key upd; }; notify no; };"
            )
        self.conf = self.dir / "named.conf"
        self.conf.write_text(
            f'options {{ directory "{self.dir}"; listen-on port {self.port} {{ 127.0.0.1; }};'
            " listen-on-v6 { none; }; pid-file none; recursion no; dnssec-validation no;"
            " session-keyfile none; };\ncontrols { };\n"
            f'include "{self.key_file}";\n' + "\n".join(stanzas) + "\n"
        )
        with (self.dir / "named.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [NAMED, "-g", "-u", "root", "-c", str(self.conf)], stdout=out, stderr=out
            )
        try:
            deadline = time.monotonic() + SERIAL_WAIT
            for zone in self.zones:
                while not _dig("127.0.0.1", self.port, zone, "SOA"):
                    assert self.proc.poll() is None, self.log()
                    assert time.monotonic() < deadline, self.log()
                    time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return (self.dir / "named.log").read_text()[-3000:]

    def txt(self, name: str) -> list[str]:
        return dig_txt("127.0.0.1", self.port, name)

    def nsupdate(self, commands: str) -> None:
        """Send an update as an admin would, with nsupdate(1)."""
        script = f"server 127.0.0.1 {self.port}\n{commands}\nsend\n"
        subprocess.run(
            ["nsupdate", "-k", str(self.key_file)], input=script.encode(), check=True, timeout=30
        )

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class Tinydns:
    """tinydns on 127.0.0.2 port 53 (it has no port option), serving
    `root/data.cdb`, which `make` in `root` builds from `root/data`."""

    def __init__(self, lines: list[str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="quarantine-tinydns-"))
        self.root = self.dir / "root"
        self.root.mkdir()
        self.data = self.root / "data"
        self.data.write_text("\n".join(lines) + "\n")
        (self.root / "Makefile").write_text(f"data.cdb: data\n\t{TINYDNS_DATA}\n")
        subprocess.run(["make", "-s", "-C", str(self.root)], check=True, timeout=60)
        env = {"IP": TINYDNS_IP, "ROOT": str(self.root), "UID": "0", "GID": "0", "PATH": "/usr/bin"}
        self.proc = subprocess.Popen(
            [TINYDNS], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        zone = next(line[1:].split(":", 1)[0] for line in lines if line.startswith("."))
        try:
            deadline = time.monotonic() + SERIAL_WAIT
            while not _dig(TINYDNS_IP, 53, zone, "SOA"):  # it does not answer outside its zones
                assert self.proc.poll() is None, "tinydns exited"
                assert time.monotonic() < deadline, "tinydns does not answer"
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def rebuild(self, lines: list[str]) -> None:
        """Add `lines` to the data file and rebuild data.cdb, as a sync would."""
        with self.data.open("a") as handle:
            handle.write("\n".join(lines) + "\n")
        subprocess.run(["make", "-s", "-C", str(self.root)], check=True, timeout=60)

    def txt(self, name: str) -> list[str]:
        return dig_txt(TINYDNS_IP, 53, name)

    def stop(self) -> None:
        _stop(self.proc)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
