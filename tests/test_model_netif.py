"""Finding the interface that carries a node's address, on fixtures and in a real network
namespace whose interfaces are named like real hosts' (not eth0)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_server import netif
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent

# Shaped like a real host's: loopback, a bonded uplink, a docker bridge, InfiniBand.
HOST = {
    "lo": ["127.0.0.1", "::1"],
    "bond0": ["10.0.0.2", "fe80::1c2:3ff:fe04:506%bond0"],
    "docker0": ["172.17.0.1"],
    "ib0": ["192.168.100.2", "fd00::2"],
}


@pytest.mark.parametrize(
    ("address", "name"),
    [("10.0.0.2", "bond0"), ("192.168.100.2", "ib0"), ("fd00:0::2", "ib0"),
     ("fe80::1c2:3ff:fe04:506", "bond0")],
)  # fmt: skip
def test_interface_for_an_address(address: str, name: str) -> None:
    assert netif.interface_for(address, HOST) == name


def test_an_address_no_interface_has_is_an_error_naming_the_interfaces() -> None:
    with pytest.raises(netif.InterfaceError, match=r"10\.0\.0\.9 .*bond0, docker0, ib0, lo"):
        netif.interface_for("10.0.0.9", HOST)
    with pytest.raises(netif.InterfaceError, match="not an IP address"):
        netif.interface_for("head-node", HOST)


def test_explicit_interface_names_win(monkeypatch: pytest.MonkeyPatch) -> None:
    both = {"NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": "bond0"}
    assert netif.socket_ifname_env("10.0.0.9", both) == {}  # no lookup at all
    # An empty value (compose's `${NCCL_SOCKET_IFNAME:-}`) means "find it".
    monkeypatch.setattr(netif, "local_addresses", lambda: HOST)
    found = netif.socket_ifname_env("10.0.0.2", {"NCCL_SOCKET_IFNAME": ""})
    assert found == {"NCCL_SOCKET_IFNAME": "bond0", "GLOO_SOCKET_IFNAME": "bond0"}


NETNS_SCRIPT = """
set -e
ip link add ens5 type veth peer name veth-a
ip addr add 192.0.2.10/24 dev ens5
ip link add enp1s0f1 type bridge
ip addr add 198.51.100.7/24 dev enp1s0f1
ip -6 addr add 2001:db8::7/64 dev enp1s0f1 nodad
ip link set ens5 up
ip link set enp1s0f1 up
ip link set lo up
exec "$@"
"""


def in_netns(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run argv in a fresh network namespace with two real-looking interfaces."""
    ok = bool(shutil.which("unshare")) and bool(shutil.which("ip"))
    if ok:
        ok = subprocess.run(["unshare", "-n", "true"], check=False).returncode == 0
    require(ok, "needs `unshare -n` (root) and iproute2 for a network namespace")
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", NETNS_SCRIPT, "netns", *argv],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def test_interfaces_found_in_a_real_network_namespace() -> None:
    code = (
        "from model_server import netif\n"
        "for a in ('192.0.2.10', '198.51.100.7', '2001:db8::7', '127.0.0.1'):\n"
        "    print(a, netif.interface_for(a))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = in_netns(sys.executable, "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "192.0.2.10 ens5", "198.51.100.7 enp1s0f1", "2001:db8::7 enp1s0f1", "127.0.0.1 lo",
    ]  # fmt: skip


def test_launcher_points_nccl_and_gloo_at_the_nodes_interface(tmp_path: Path) -> None:
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "MIXVLLM_STATE_DIR": str(tmp_path),
        "MIXVLLM_VLLM_BIN": "/opt/vllm/bin/vllm", "VLLM_API_KEY": "k",
        "MIXVLLM_PROFILE": "llama-3.1-405b-instruct-fp8-multinode",
        "NODE_RANK": "1", "MASTER_ADDR": "192.0.2.10", "VLLM_HOST_IP": "198.51.100.7",
        "NCCL_SOCKET_IFNAME": "", "GLOO_SOCKET_IFNAME": "",
    }  # fmt: skip
    result = in_netns(sys.executable, "-m", "model_server", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "# env: NCCL_SOCKET_IFNAME=enp1s0f1" in result.stderr.splitlines()
    assert "# env: GLOO_SOCKET_IFNAME=enp1s0f1" in result.stderr.splitlines()
    argv = shlex.split(result.stdout)
    assert argv[argv.index("--node-rank") + 1] == "1"
    assert argv[argv.index("--master-addr") + 1] == "192.0.2.10"
    assert argv[-1] == "--headless"
    # A node address that no interface carries stops a real start with one clear line.
    env["VLLM_HOST_IP"] = "203.0.113.5"
    result = in_netns(sys.executable, "-m", "model_server", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "mixvllm-serve: error: VLLM_HOST_IP=203.0.113.5: no interface of this machine has "
        "address 203.0.113.5 (interfaces: enp1s0f1, ens5, lo, veth-a)"
    )
