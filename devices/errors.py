"""The registry's errors; :class:`devices.api.RegistryRoute` maps them to HTTP answers."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of the registry's domain errors."""

    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(RegistryError):
    """No such record in the caller's scope (out of scope answers exactly like missing)."""

    status_code = 404

    def __init__(self, record_type: str) -> None:
        super().__init__(f"{record_type} not found")
        self.record_type = record_type


class InvalidReferenceError(RegistryError):
    """A field names a record that does not exist in the caller's scope."""

    status_code = 422

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ConflictError(RegistryError):
    """The change collides with an existing record (a duplicate id or priority)."""

    status_code = 409


class UnavailableError(RegistryError):
    """The registry service is not running (server starting or stopping)."""

    status_code = 503
