"""Staff identity: password hashing, short-lived signed tokens, and the caller's scope.

A :class:`Principal` is what every scoped query takes: the caller's role and the part of the
service network (an ltree path) they serve. FastAPI routes get it with
``principal: PrincipalDep``; WebSocket endpoints call :func:`principal_from_token`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from pwdlib import PasswordHash

ROLES = ("dispatcher", "supervisor", "operator", "admin")
_hasher = PasswordHash.recommended()  # argon2id
_DUMMY_HASH = _hasher.hash("carecall-timing-equaliser")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Signing secret and token lifetime; built by the composition root from settings."""

    secret: str
    token_ttl_s: int = 15 * 60
    algorithm: str = "HS256"
    issuer: str = "carecall"


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


def issue_token(principal: Principal, config: AuthConfig, *, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": config.issuer,
        "sub": principal.username,
        "uid": principal.user_id,
        "role": principal.role,
        "scope": principal.scope_path,
        "iat": issued,
        "exp": issued + config.token_ttl_s,
    }
    return jwt.encode(claims, config.secret, algorithm=config.algorithm)


def principal_from_token(token: str, config: AuthConfig) -> Principal:
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
    return Principal(int(claims["uid"]), str(claims["sub"]), str(role), str(claims["scope"]))


oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")


def get_auth_config(request: Request) -> AuthConfig:
    config: AuthConfig = request.app.state.auth
    return config


async def current_principal(
    request: Request, token: Annotated[str, Depends(oauth2_scheme)]
) -> Principal:
    try:
        return principal_from_token(token, get_auth_config(request))
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
