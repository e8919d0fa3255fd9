"""Who is asking, as an IP subject.

The client's address is ``request.client.host``: behind our load balancer, uvicorn's
``ProxyHeadersMiddleware`` (installed by the app factory from ``TRUSTED_PROXIES``, and by the
server itself under gunicorn) has already replaced the proxy's address with the one it saw in
``X-Forwarded-For``. What is left here is how an address is counted.
"""

from __future__ import annotations

import ipaddress

from starlette.requests import Request

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str | None) -> Address | None:
    """An address as the server reports it; an IPv4-mapped IPv6 address is the IPv4 one (a
    dual-stack socket reports IPv4 clients so, and they must share one window)."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def request_client_ip(request: Request) -> Address | None:
    return parse_address(request.client.host if request.client else None)


def ip_subject(address: Address | None) -> str:
    """The limiter subject of an address. IPv6 clients count by /64: one host usually holds a
    whole /64 and could otherwise rotate through its addresses to escape the limit."""
    if address is None:
        return "ip:unknown"
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((int(address) >> 64 << 64, 64))
        return f"ip:{network}"
    return f"ip:{address}"
