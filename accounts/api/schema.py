"""OpenAPI descriptions of our authentication, so the schema and Swagger UI show them."""

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from accounts.permissions import PublicOrTenantMember


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's, knowing our public views: the catalogue answers without credentials
    (``PublicOrTenantMember``), and said it needed a key, so generated clients and Swagger UI
    insisted on one."""

    def get_auth(self):
        auths = super().get_auth()
        public = any(isinstance(p, PublicOrTenantMember) for p in self.view.get_permissions())
        if public and {} not in auths:
            auths.append({})
        return auths


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "mm_live_…",
            "description": "An API key from the dashboard: `Authorization: Bearer mm_live_…`.",
        }


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.TenantSessionAuthentication"
    name = "session"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}


ERROR = {
    "type": "object",
    "description": "Every error of /api/v1/ (accounts/api/errors.py). Some carry more fields "
    "naming what to do next, e.g. `missing_ranges` (an upload), `use_alias` (a yanked "
    "version), `subscribe_url` (a model not subscribed to).",
    "properties": {
        "detail": {"type": "string", "description": "What went wrong, and what to do."},
        "code": {
            "type": "string",
            "description": "Stable and machine-readable: invalid, not_authenticated, "
            "authentication_failed, permission_denied, forbidden, not_found, conflict, gone, "
            "payment_required, rate_limited, taken_down, unavailable, server_error, ...",
        },
        "errors": {
            "type": "object",
            "additionalProperties": {},
            "description": "With code `invalid`: the messages for each field.",
        },
    },
    "required": ["detail", "code"],
    "additionalProperties": True,
}
METHODS = ("get", "put", "post", "delete", "patch")


def document_errors(result, generator, request, public):
    """drf-spectacular hook: every /api/v1/ operation answers errors (any 4xx or 5xx) in the
    one shape above; say so as each operation's ``default`` response, so a client generated
    from the schema reads them. (The /v2 views declare the protocol's own errors.)"""
    result["components"].setdefault("schemas", {})["Error"] = ERROR
    default = {
        "description": "An error: 400 invalid, 401 no or bad key, 403 missing scope, 404 "
        "not found (or not yours), 402, 409, 410, 413, 429, 451, 503, ...",
        "headers": {
            "Retry-After": {
                "schema": {"type": "string"},
                "description": "With 429 and 503, and a 409 while another request completes "
                "the same upload: seconds to wait before trying again.",
            }
        },
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for path, operations in result["paths"].items():
        if path.startswith("/api/"):
            for method, operation in operations.items():
                if method in METHODS:
                    operation["responses"].setdefault("default", default)
    return result
