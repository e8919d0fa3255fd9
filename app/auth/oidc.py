"""OIDC bearer tokens: JWTs verified against the identity provider's JWKS.

The key set is fetched with httpx and cached; an unknown ``kid`` forces one refresh (key
rotation) but at most once a minute, so garbage tokens cannot make us hammer the provider.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import jwt

from app.kit.errors import AuthenticationError, ExternalServiceError
from app.kit.metrics import track_external
from app.settings import Settings

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
_MIN_REFRESH_SECONDS = 60.0


@dataclass(frozen=True)
class OidcIdentity:
    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    name: str | None
    # The raw org claim: it names an org only through that org's binding (org_oidc_bindings).
    org_claim: str | None
    role: str | None


class OidcVerifier:
    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        if not (settings.oidc_jwks_url and settings.oidc_issuer and settings.oidc_audience):
            raise ValueError("OIDC needs OIDC_JWKS_URL, OIDC_ISSUER and OIDC_AUDIENCE")
        self._settings = settings
        self._http = http or httpx.AsyncClient(timeout=5.0)
        self._keys: jwt.PyJWKSet | None = None
        self._fetched_at = 0.0
        self._lock = anyio.Lock()

    async def _key_set(self, *, refresh: bool) -> jwt.PyJWKSet:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            stale = age > self._settings.oidc_jwks_cache_seconds
            if self._keys is None or stale or (refresh and age > _MIN_REFRESH_SECONDS):
                url = self._settings.oidc_jwks_url
                assert url is not None
                try:
                    with track_external("oidc", "jwks"):
                        response = await self._http.get(url)
                        response.raise_for_status()
                    self._keys = jwt.PyJWKSet.from_dict(response.json())
                    self._fetched_at = time.monotonic()
                except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                    if self._keys is None:
                        raise ExternalServiceError(
                            "identity provider",
                            "Could not fetch the identity provider's keys; try again shortly.",
                        ) from exc
            return self._keys

    async def _signing_key(self, kid: str | None) -> Any:
        for refresh in (False, True):
            keys = await self._key_set(refresh=refresh)
            for key in keys.keys:
                if kid is None or key.key_id == kid:
                    return key
        raise AuthenticationError("The token was signed by a key the identity provider lacks.")

    async def verify(self, token: str) -> OidcIdentity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError("The bearer token is not a valid JWT.") from exc
        if header.get("alg") not in ALGORITHMS:
            raise AuthenticationError("The token's signing algorithm is not accepted.")
        key = await self._signing_key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self._settings.oidc_audience,
                issuer=self._settings.oidc_issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("The token has expired; sign in again.") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"The token was refused: {exc}.") from exc
        org = claims.get(self._settings.oidc_org_claim)
        role = claims.get(self._settings.oidc_role_claim)
        return OidcIdentity(
            issuer=str(claims["iss"]),
            subject=str(claims["sub"]),
            email=claims.get("email"),
            # Only a JSON true: some providers send the string "false", which bool() reads as true.
            email_verified=claims.get("email_verified") is True,
            name=claims.get("name"),
            org_claim=str(org) if org is not None else None,
            role=str(role) if role is not None else None,
        )
