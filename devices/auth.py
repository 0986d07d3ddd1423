"""Staff identity: password hashing, short-lived signed tokens, and the caller's scope.

A :class:`Principal` is what every scoped query takes: the caller's role and the part of the
service network (an ltree path) they serve. FastAPI routes get it with
``principal: PrincipalDep``; WebSocket endpoints call :func:`principal_from_token`.

A token proves who signed in, and when; what they may do now comes from the staff table. With a
:class:`~devices.staff.StaffCache` in the :class:`AuthConfig` (the server always has one), a
token of a retired user, or of an older ``token_version`` (password changed), is refused, and
the role and scope are the user's current ones. Without one (a bare test app) the token's own
claims are used. docs/registry.md, "Tokens and sessions".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from pwdlib import PasswordHash

from devices.staff import StaffAccess, StaffCache, StaffUnavailableError

ROLES = ("dispatcher", "supervisor", "operator", "admin")
_hasher = PasswordHash.recommended()  # argon2id
_DUMMY_HASH = _hasher.hash("carecall-timing-equaliser")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Signing secret and token lifetime; built by the composition root from settings."""

    secret: str
    token_ttl_s: int = 15 * 60
    # A session (one sign-in, refreshed) ends this long after the password was typed: a
    # 12-hour shift and its handover, then a new sign-in.
    session_max_s: int = 13 * 3600
    algorithm: str = "HS256"
    issuer: str = "carecall"
    # The server's copy of the staff table (devices.staff); None: trust the token's claims.
    staff: StaffCache | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated staff user."""

    user_id: int
    username: str
    role: str
    scope_path: str  # ltree text, e.g. "sjz.changan"

    def covers(self, area_path: str | None) -> bool:
        """Whether ``area_path`` lies inside this user's scope (same test as ltree ``<@``)."""
        if area_path is None:
            return False
        return area_path == self.scope_path or area_path.startswith(self.scope_path + ".")


class AuthError(Exception):
    """Credentials or token refused."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant work whether or not the user exists (no user enumeration by timing)."""
    if password_hash is None:
        _hasher.verify(password, _DUMMY_HASH)
        return False
    try:
        return bool(_hasher.verify(password, password_hash))
    except Exception:
        return False


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """A verified token: who, as what when it was issued, and its session."""

    principal: Principal
    token_version: int
    auth_time: int  # when the password was checked (epoch s); kept across refreshes
    issued_at: int
    expires_at: int


def issue_token(
    principal: Principal,
    config: AuthConfig,
    *,
    token_version: int = 0,
    auth_time: int | None = None,
    not_after: int | None = None,
    now: float | None = None,
) -> str:
    """A signed token; ``auth_time`` (default: now) is when the password was checked, kept
    by refreshes; ``not_after`` caps the expiry (the end of the session)."""
    issued = int(now if now is not None else time.time())
    expires = issued + config.token_ttl_s
    if not_after is not None:
        expires = min(expires, not_after)
    claims: dict[str, Any] = {
        "iss": config.issuer,
        "sub": principal.username,
        "uid": principal.user_id,
        "role": principal.role,
        "scope": principal.scope_path,
        "ver": token_version,
        "auth_time": issued if auth_time is None else auth_time,
        "iat": issued,
        "exp": expires,
    }
    return jwt.encode(claims, config.secret, algorithm=config.algorithm)


def decode_token(token: str, config: AuthConfig) -> TokenClaims:
    """Check signature, issuer and expiry; nothing about the user's current state."""
    try:
        claims = jwt.decode(
            token,
            config.secret,
            algorithms=[config.algorithm],
            issuer=config.issuer,
            options={"require": ["exp", "iat", "sub", "uid", "role", "scope"]},
        )
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    role = claims["role"]
    if role not in ROLES:
        raise AuthError("invalid token: unknown role")
    try:
        principal = Principal(
            int(claims["uid"]), str(claims["sub"]), str(role), str(claims["scope"])
        )
        issued = int(claims["iat"])
        return TokenClaims(
            principal,
            token_version=int(claims.get("ver", 0)),
            auth_time=int(claims.get("auth_time", issued)),
            issued_at=issued,
            expires_at=int(claims["exp"]),
        )
    except (TypeError, ValueError) as exc:
        raise AuthError("invalid token: malformed claims") from exc


def admit(claims: TokenClaims, access: StaffAccess | None) -> Principal:
    """The principal a verified token stands for now, given its user's row (None: no such
    user); AuthError if the user is retired or the token's version is not current."""
    if access is None:
        raise AuthError("unknown user")
    if access.retired:
        raise AuthError("user retired")
    if access.token_version != claims.token_version:
        raise AuthError("token revoked")
    return Principal(access.user_id, access.username, access.role, access.scope_path)


def admit_cached(claims: TokenClaims, staff: StaffCache | None) -> Principal:
    """:func:`admit` from memory only. A user the copy does not hold is refused once the
    table has been read; before that (no database since start) the token's claims stand."""
    if staff is None:
        return claims.principal
    uid = claims.principal.user_id
    if not staff.knows(uid) and not staff.loaded:
        return claims.principal
    return admit(claims, staff.get(uid))


def principal_from_token(token: str, config: AuthConfig) -> Principal:
    """Verify ``token`` and admit its user from memory (no database: usable anywhere)."""
    return admit_cached(decode_token(token, config), config.staff)


async def authenticate(token: str, config: AuthConfig) -> Principal:
    """:func:`principal_from_token`, but a user the copy has never seen is read from the
    database once (a user created a moment ago on another process)."""
    claims = decode_token(token, config)
    staff = config.staff
    if staff is None:
        return claims.principal
    try:
        access = await staff.fetch(claims.principal.user_id)
    except StaffUnavailableError:
        return admit_cached(claims, staff)
    return admit(claims, access)


oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")


def get_auth_config(request: Request) -> AuthConfig:
    config: AuthConfig = request.app.state.auth
    return config


async def current_principal(
    request: Request, token: Annotated[str, Depends(oauth2_scheme)]
) -> Principal:
    try:
        return await authenticate(token, get_auth_config(request))
    except AuthError as exc:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="not authenticated",
            headers={"WWW-Authenticate": "Bearer"},
        ) from exc


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: str) -> Any:
    """Dependency: the caller must have one of ``roles`` (403 otherwise)."""

    async def check(principal: PrincipalDep) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="forbidden")
        return principal

    return Depends(check)
