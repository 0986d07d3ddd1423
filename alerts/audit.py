"""Auditing repeated list reads without a row per refresh.

A dispatcher's console re-reads its queue on every incident event and every 30 s; one audit
row per re-read would bury the trail. The helper lives with the audit trail itself
(:mod:`devices.audit`), where the registry's list reads use it too; see its docstring for the
rule. The incident queue's key also covers the set of incidents returned: a queue that shows a
new incident is a new read, audited at once.
"""

from __future__ import annotations

from devices.audit import audit_list_read, read_key

__all__ = ["audit_list_read", "read_key"]
