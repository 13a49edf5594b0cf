"""Trusted reverse proxies: which address and protocol are the client's.

Behind a reverse proxy every connection comes from the proxy, which says who
its client was in headers: ``X-Forwarded-For`` (each proxy appends the
address it got the request from), ``X-Real-IP`` and ``X-Forwarded-Proto``.
Anyone can send these headers, so they are believed only when the direct
peer is within ``trusted_proxies``:

- ``X-Forwarded-For`` is walked from the right (the hop nearest to us) to the
  left, passing over addresses that are themselves trusted proxies; the first
  other one is the client (if all are trusted, the left-most is). An entry
  that is not a plain IP address (no port, brackets or zone) ends the walk,
  and the last address read is the client: nothing left of a garbled hop can
  be believed, and no arbitrary string ever stands for an address;
- without ``X-Forwarded-For``, a valid ``X-Real-IP`` is the client;
- ``X-Forwarded-Proto`` (its first value, if a list) gives the protocol, when
  it says ``http`` or ``https``.

From any other peer these headers are ignored: the peer is the client.
IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``) count as IPv4.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

__all__ = ["TrustedProxies", "Network", "parse_network"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_PROTOCOLS = ("http", "https")


def parse_network(entry: str) -> Network:
    """An address (a network of one) or a CIDR network, IPv4 or IPv6.

    Raises ``ValueError`` saying what is wrong, also for a network written
    with host bits set (``10.0.0.1/8``: ``10.0.0.0/8`` or ``10.0.0.1``?).
    """
    text = entry.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
    raise ValueError(f"{entry!r} has host bits set: write {network} for the network, "
                     f"or {text.partition('/')[0]} for the one address")


class TrustedProxies:
    """The networks of ``trusted_proxies``, parsed once, and what a request's headers are believed to say."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(parse_network(entry) for entry in entries)

    def is_trusted(self, address: str) -> bool:
        """Whether ``address`` is an IP address within a trusted network."""
        ip = _address(address)
        return ip is not None and self._contains(ip)

    def client(self, peer: str, forwarded_for: str | None, real_ip: str | None) -> str:
        """The client's address: ``peer``, or the one a trusted ``peer`` forwarded."""
        if not self.networks or not self.is_trusted(peer):
            return peer
        if not forwarded_for or not forwarded_for.strip():
            ip = _forwarded(real_ip) if real_ip else None
            return peer if ip is None else str(ip)
        client = peer
        for entry in reversed(forwarded_for.split(",")):
            ip = _forwarded(entry)
            if ip is None:
                break
            client = str(ip)
            if not self._contains(ip):
                break
        return client

    def protocol(self, peer: str, forwarded_proto: str | None, direct: str) -> str:
        """``http`` or ``https`` as the client used it: ``direct`` (the peer's), or what a trusted peer forwarded."""
        if forwarded_proto and self.networks and self.is_trusted(peer):
            first = forwarded_proto.split(",")[0].strip().lower()
            if first in _PROTOCOLS:
                return first
        return direct

    def _contains(self, ip: _Address) -> bool:
        return any(ip in network for network in self.networks)


def _forwarded(text: str) -> _Address | None:
    """A forwarded address, or None if it is not one.

    A zone (``fe80::1%eth0``) names an interface of the host that wrote it,
    meaningless here, and could be any text: the entry is not an address.
    """
    text = text.strip()
    return None if "%" in text else _address(text)


def _address(text: str) -> _Address | None:
    """``text`` as an IP address (IPv4-mapped IPv6 as IPv4), or None if it is not one."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
