"""The alert side's exceptions: one shallow tree, each carrying its data as attributes."""

from __future__ import annotations


class AlertError(Exception):
    """Base of every error the alert side raises on purpose."""


class IncidentNotFoundError(AlertError):
    """No such incident, or it lies outside the caller's scope (indistinguishable on purpose)."""

    def __init__(self, incident_id: int) -> None:
        super().__init__(f"incident {incident_id} not found")
        self.incident_id = incident_id


class InvalidTransitionError(AlertError):
    """The action is not allowed from the incident's current state."""

    def __init__(self, incident_id: int, state: str, action: str, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"incident {incident_id} is {state}; cannot {action}{detail}")
        self.incident_id = incident_id
        self.state = state
        self.action = action
        self.reason = reason


class NotFoundError(AlertError):
    """Some other record (maintenance window, call) is absent or out of scope."""

    def __init__(self, what: str, record_id: int | str) -> None:
        super().__init__(f"{what} {record_id} not found")
        self.what = what
        self.record_id = record_id


class ChannelError(AlertError):
    """A notification channel could not deliver (after its retries)."""

    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(f"{channel}: {reason}")
        self.channel = channel
        self.reason = reason
