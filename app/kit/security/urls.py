"""URLs the server will fetch (webhooks, JWKS, imports): refuse what could reach inside.

Server-side request forgery is the risk: a URL naming ``169.254.169.254`` (cloud metadata),
``localhost:6379`` (Valkey) or a pod IP turns the server into the attacker's proxy. So only
http(s), no credentials in the URL, and every address the host resolves to must be public.

DNS can change between this check and the fetch (rebinding): callers that fetch should connect
to one of ``ValidatedUrl.addresses`` (keeping the Host header / SNI), or re-check the peer.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import anyio

from app.kit.errors import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = frozenset({"http", "https"})
# Networks `ipaddress` does not flag but that are not the public internet.
_EXTRA_BLOCKED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598), used inside some clouds
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
    )
)
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True)
class ValidatedUrl:
    url: str
    scheme: str
    host: str
    port: int
    # Empty when the URL was checked without resolving it.
    addresses: tuple[IPAddress, ...] = ()


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 is judged as the IPv4 address it reaches.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in ipaddress.ip_network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or any(address in net for net in _EXTRA_BLOCKED if net.version == address.version)
        or not address.is_global
    )


def _literal_address(host: str) -> IPAddress | None:
    """The IP a host names literally, including the legacy forms (``0x7f.1``, ``2130706433``)
    that resolvers and browsers accept but ``ipaddress`` does not."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fA-FxX.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _parse(url: str) -> tuple[SplitResult, str, int]:
    if not isinstance(url, str) or not url:
        raise ValidationError("The URL is empty.")
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if _CONTROL_OR_SPACE.search(url):
        raise ValidationError("The URL contains spaces, control characters or backslashes.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError("The URL is not valid.") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise ValidationError("Only http and https URLs are accepted.")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise ValidationError("The URL must not contain a user name or password.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValidationError("The URL has no host.")
    try:
        # IDNA for internationalised names; refuses labels no resolver would accept.
        host = host.encode("idna").decode("ascii") if _literal_address(host) is None else host
    except UnicodeError as exc:
        raise ValidationError("The URL's host name is not valid.") from exc
    return parts, host, port or (443 if scheme == "https" else 80)


def _refuse_private(host: str, addresses: list[IPAddress]) -> None:
    if not addresses:
        raise ValidationError(f"The host {host!r} could not be resolved.")
    for address in addresses:
        if not is_public_address(address):
            raise ValidationError(
                "The URL points to a private, loopback, link-local or reserved address; "
                "only public hosts are accepted."
            )


def _addresses_from(infos: list[tuple[object, ...]]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        found.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    return found


def _check_without_dns(url: str) -> tuple[SplitResult, str, int, IPAddress | None]:
    parts, host, port = _parse(url)
    literal = _literal_address(host)
    if literal is not None:
        _refuse_private(host, [literal])
    elif host.lower() == "localhost" or host.lower().endswith(".localhost"):
        # RFC 6761: always loopback, whatever a resolver says.
        _refuse_private(host, [ipaddress.IPv4Address("127.0.0.1")])
    return parts, host, port, literal


def validate_public_url(url: str, *, resolve: bool = True) -> ValidatedUrl:
    """Check ``url`` is an http(s) URL to public hosts only, resolving DNS names (blocking)."""
    parts, host, port, literal = _check_without_dns(url)
    addresses: list[IPAddress] = [literal] if literal is not None else []
    if resolve and literal is None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ValidationError(f"The host {host!r} could not be resolved.") from exc
        addresses = _addresses_from(list(infos))
        _refuse_private(host, addresses)
    return ValidatedUrl(
        url=url, scheme=parts.scheme.lower(), host=host, port=port, addresses=tuple(addresses)
    )


async def validate_public_url_async(url: str) -> ValidatedUrl:
    """:func:`validate_public_url` for the event loop: resolves without blocking it."""
    parts, host, port, literal = _check_without_dns(url)
    addresses: list[IPAddress] = [literal] if literal is not None else []
    if literal is None:
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ValidationError(f"The host {host!r} could not be resolved.") from exc
        addresses = _addresses_from(list(infos))
        _refuse_private(host, addresses)
    return ValidatedUrl(
        url=url, scheme=parts.scheme.lower(), host=host, port=port, addresses=tuple(addresses)
    )
