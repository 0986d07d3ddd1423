"""The features the server is composed of: their HTTP routers and their background services.

Each feature package stays ignorant of ``ingest``; the small adapters here hand it what it
needs from the :class:`~ingest.service.Runtime` (pool, settings values, live lane, consumers).
``carecall serve`` runs every feature in :data:`FEATURES`; tests pick the ones they need.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from fastapi import APIRouter

from ingest.service import Runtime


@dataclass(frozen=True)
class Feature:
    name: str
    routers: Callable[[], list[APIRouter]] = list
    # Background services: entered after the runtime is up, left before it closes.
    run: Callable[[Runtime], AbstractAsyncContextManager[None]] | None = None
    tags: list[str] = field(default_factory=list)


FEATURES: list[Feature] = []
