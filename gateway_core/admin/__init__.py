"""The admin REST API under ``/admin/api``: tokens, users, organizations, keys, deployments, routing rules.

See ``docs/admin-api.md`` (generated from the OpenAPI document by ``python -m gateway_core.admin.reference``).
"""

from gateway_core.admin.app import OPERATIONS, AdminApi, create_admin_app

__all__ = ["OPERATIONS", "AdminApi", "create_admin_app"]
