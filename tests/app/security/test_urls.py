"""URLs the server would fetch: only http(s) to public hosts, resolved names included."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from app.kit.errors import ValidationError
from app.kit.security import urls
from app.kit.security.urls import (
    is_public_address,
    validate_public_url,
    validate_public_url_async,
)


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    """DNS is outside the process: answer from a table (the only fake here)."""

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (ip, port),
            )
            for ip in answers[host]
        ]

    async def agetaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return getaddrinfo(host, port)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(urls.anyio, "getaddrinfo", agetaddrinfo)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://example.com/file",
        "file:///etc/passwd",
        "gopher://example.com",
        "javascript:alert(1)",
        "//example.com/x",
        "http://",
        "http://user:pass@example.com/",
        "https://token@example.com/",
        "http://example.com@127.0.0.1/",
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8000/",
        "http://api.localhost/",
        "http://exa mple.com/",
        "http://example.com\\@127.0.0.1/",
        "http://example.com:99999/",
        "http://example.com/\r\nHost: x",
        "https://" + "a" * 3000 + ".com/",
    ],
)
def test_refused_without_dns(url: str) -> None:
    with pytest.raises(ValidationError):
        validate_public_url(url, resolve=False)


def test_public_literal_accepted() -> None:
    checked = validate_public_url("https://1.1.1.1:8443/hook?x=1")
    assert checked.port == 8443
    assert checked.addresses == (ipaddress.ip_address("1.1.1.1"),)


def test_names_are_resolved_and_every_address_must_be_public(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_dns(
        monkeypatch,
        {
            "hooks.example.com": ["93.184.215.14", "2606:4700:4700::1111"],
            "rebind.example.com": ["93.184.215.14", "10.0.0.5"],
            "internal.example.com": ["192.168.0.10"],
        },
    )
    checked = validate_public_url("https://hooks.example.com/x")
    assert checked.host == "hooks.example.com"
    assert checked.port == 443
    assert len(checked.addresses) == 2
    for refused in ("http://rebind.example.com/", "http://internal.example.com/"):
        with pytest.raises(ValidationError, match="private"):
            validate_public_url(refused)
    with pytest.raises(ValidationError, match="resolved"):
        validate_public_url("http://nowhere.example.com/")


async def test_async_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"hooks.example.com": ["93.184.215.14"], "meta.example": ["::1"]})
    checked = await validate_public_url_async("http://hooks.example.com:8080/")
    assert checked.addresses == (ipaddress.ip_address("93.184.215.14"),)
    with pytest.raises(ValidationError):
        await validate_public_url_async("http://meta.example/")
    with pytest.raises(ValidationError):
        await validate_public_url_async("http://127.0.0.1/")


async def test_real_resolver_refuses_localhost_names() -> None:
    # The real resolver, no fake: whatever /etc/hosts says, localhost is refused.
    with pytest.raises(ValidationError):
        await validate_public_url_async("http://localhost/")


def test_idn_host_is_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"xn--bcher-kva.example": ["93.184.215.14"]})
    assert validate_public_url("http://bücher.example/").host == "xn--bcher-kva.example"
