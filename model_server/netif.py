"""The network interface that carries a node's cluster address, for NCCL and Gloo.

Both libraries pick one interface by name (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME). Real
hosts name theirs ens*, enp*, bond0 or ib0, so the name is looked up from the address
every node already knows (VLLM_HOST_IP) instead of being guessed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

IFNAME_ENVS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")


class InterfaceError(Exception):
    """No interface of this machine carries the address."""


def local_addresses() -> dict[str, list[str]]:
    """Interface name -> its IPv4/IPv6 addresses, as the kernel reports them."""
    import psutil  # noqa: PLC0415

    return {
        name: [a.address for a in addrs if a.family.name in ("AF_INET", "AF_INET6")]
        for name, addrs in psutil.net_if_addrs().items()
    }


def interface_for(address: str, interfaces: Mapping[str, Iterable[str]] | None = None) -> str:
    """The name of the interface that carries `address`; raises InterfaceError."""
    try:
        wanted = ipaddress.ip_address(address.strip())
    except ValueError as exc:
        raise InterfaceError(f"{address!r} is not an IP address") from exc
    interfaces = local_addresses() if interfaces is None else interfaces
    for name, addresses in sorted(interfaces.items()):
        for text in addresses:
            # IPv6 link-local addresses carry a zone: fe80::1%ens5.
            if ipaddress.ip_address(text.split("%", 1)[0]) == wanted:
                return name
    names = ", ".join(sorted(interfaces)) or "none"
    raise InterfaceError(f"no interface of this machine has address {wanted} (interfaces: {names})")


def socket_ifname_env(host_ip: str, env: Mapping[str, str]) -> dict[str, str]:
    """NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME for `host_ip`, except those already set."""
    missing = [name for name in IFNAME_ENVS if not env.get(name, "").strip()]
    if not missing:
        return {}
    name = interface_for(host_ip)
    return dict.fromkeys(missing, name)
