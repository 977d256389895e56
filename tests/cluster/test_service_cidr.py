"""The local cluster's Service CIDR stays inside loopback (127.0.0.0/8): the API server dials
ClusterIPs (webhooks, APIServices, proxy requests naming a Service), and such traffic must never
leave this machine."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from tests.cluster import controlplane


def test_service_cidr_is_in_loopback() -> None:
    network = ipaddress.ip_network(controlplane.SERVICE_CIDR)
    assert network.subnet_of(ipaddress.ip_network("127.0.0.0/8"))


def test_apiserver_and_controller_manager_get_the_same_cidr() -> None:
    source = Path(controlplane.__file__).read_text()
    assert source.count('f"--service-cluster-ip-range={SERVICE_CIDR}"') == 2
    assert "10.96." not in source
