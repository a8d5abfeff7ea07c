"""Hosts of our own on one machine: a network namespace per host, joined to a bridge in the root
namespace by a veth pair, with addresses in a private /24.

The bridge holds the subnet's first address, so servers started in the root namespace and bound to it
(PostgreSQL, Redis, the object store) are reachable from every host, and the test (in the root
namespace) reaches every host. `Host.cut()` takes the host's link down at the bridge: its processes
keep running but reach nothing, and nothing reaches them, as when a host drops off the network.
Every name carries a random tag, and `Network.close()` removes everything it made (also after a failure).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

from tests.support.availability import unavailable


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def require_netns() -> None:
    """Skip (fail in CI) unless this process may make namespaces: root and the `ip` tool."""
    if shutil.which("ip") is None:
        unavailable("the `ip` tool (iproute2) is missing; multi-host tests skipped")
    if os.geteuid() != 0:
        unavailable("network namespaces need root; multi-host tests skipped")


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no route of this machine already covers."""
    routes = _ip("-4", "route", "show", "table", "all")
    taken = [ipaddress.ip_network(word, strict=False) for word in routes.split() if "/" in word]
    for _ in range(100):
        octets = uuid.uuid4().bytes
        candidate = ipaddress.IPv4Network(f"10.{200 + octets[0] % 50}.{octets[1]}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 for the test network")


@dataclass
class Host:
    """A network namespace with one address on the bridge."""

    namespace: str
    address: str
    bridge_end: str  # the veth end on the bridge (root namespace): down = cut off
    is_cut: bool = False

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        _ip("link", "set", self.bridge_end, "down")
        self.is_cut = True

    def pids(self) -> list[int]:
        """Processes still running in this host's namespace."""
        return [int(pid) for pid in _ip("netns", "pids", self.namespace).split()]


@dataclass
class Network:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    hosts: list[Host] = field(default_factory=list)
    _bridge_up: bool = False

    @property
    def bridge(self) -> str:
        return f"mbr{self.tag}"

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace: where the shared servers listen."""
        return str(self.subnet.network_address + 1)

    def start(self) -> Network:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_up = True
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, role: str) -> Host:
        index = len(self.hosts)
        namespace, bridge_end, host_end = (
            f"mapo-{self.tag}-{role}",
            f"mv{self.tag}{index}",
            f"mh{self.tag}{index}",
        )
        address = str(self.subnet.network_address + 2 + index)
        _ip("netns", "add", namespace)
        host = Host(namespace, address, bridge_end)
        self.hosts.append(host)
        _ip("link", "add", bridge_end, "type", "veth", "peer", "name", host_end, "netns", namespace)
        _ip("link", "set", bridge_end, "master", self.bridge)
        _ip("link", "set", bridge_end, "up")
        inside = ["netns", "exec", namespace, "ip"]
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "addr", "add", f"{address}/24", "dev", host_end)
        _ip(*inside, "link", "set", host_end, "up")
        return host

    def close(self) -> None:
        """Remove every namespace (their veth ends go with them) and the bridge; best effort."""
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.bridge_end], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        if self._bridge_up:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
