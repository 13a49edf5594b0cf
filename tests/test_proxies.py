"""core.proxies: whose address and protocol a request's headers are believed to give."""
from __future__ import annotations

import pytest

from core.proxies import TrustedProxies, parse_network


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_headers_say() -> None:
    proxies = TrustedProxies()
    assert proxies.client("127.0.0.1", "1.2.3.4", "5.6.7.8") == "127.0.0.1"
    assert proxies.protocol("127.0.0.1", "https", "http") == "http"


def test_an_ipv4_mapped_peer_is_trusted_by_its_ipv4_network() -> None:
    # What a dual-stack socket reports for an IPv4 connection.
    proxies = TrustedProxies(["127.0.0.1"])
    assert proxies.is_trusted("::ffff:127.0.0.1")
    assert proxies.client("::ffff:127.0.0.1", "1.2.3.4", None) == "1.2.3.4"
    assert proxies.client("::ffff:127.0.0.2", "1.2.3.4", None) == "::ffff:127.0.0.2"


def test_a_forwarded_ipv4_mapped_client_is_stored_as_ipv4() -> None:
    assert TrustedProxies(["::1"]).client("::1", "::ffff:1.2.3.4", None) == "1.2.3.4"


@pytest.mark.parametrize("peer", ["", "unix:/run/jobdeck.sock", "127.0.0.1:80"])
def test_a_peer_that_is_not_an_address_is_never_trusted(peer: str) -> None:
    proxies = TrustedProxies(["0.0.0.0/0", "::/0"])
    assert not proxies.is_trusted(peer)
    assert proxies.client(peer, "1.2.3.4", None) == peer
    assert proxies.protocol(peer, "https", "http") == "http"


def test_networks_are_parsed_once_and_bad_ones_refused() -> None:
    assert [str(n) for n in TrustedProxies([" 10.0.0.0/8", "::1"]).networks] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match="'nginx' is not an IP address or CIDR network"):
        parse_network("nginx")
