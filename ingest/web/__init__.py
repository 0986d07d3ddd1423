"""Browser front ends served by the CareCall server: the dispatcher console and the operator
dashboard (docs/console.md)."""

from ingest.web.feature import web_feature

__all__ = ["web_feature"]
