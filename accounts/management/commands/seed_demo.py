"""A demo to click through: a publisher and a consumer organisation with their people and an
API key each. Idempotent: a second run changes nothing and prints no keys."""

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts import services
from accounts.management.commands._output import emit
from accounts.models import ALL_SCOPES, Role, Scope, Tenant, User

DEMO_PASSWORD = "modelmarket-demo"  # noqa: S105 - a documented demo login, local only
DEMO = [
    # (tenant slug, name, owner email, member email, member role, key scopes)
    (
        "acme-ai",
        "Acme AI (publisher)",
        "alice@acme.example",
        "dev@acme.example",
        Role.DEVELOPER,
        sorted(ALL_SCOPES),
    ),
    (
        "globex",
        "Globex (consumer)",
        "bob@globex.example",
        "billing@globex.example",
        Role.BILLING,
        [Scope.MODELS_READ, Scope.INFERENCE, Scope.BILLING_READ],
    ),
]


class Command(BaseCommand):
    help = "Create the demo organisations, users and API keys (printed once)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")

    @transaction.atomic
    def handle(self, *args, json, **options):
        made = {"password": DEMO_PASSWORD, "tenants": []}
        for slug, name, owner_email, member_email, member_role, scopes in DEMO:
            if Tenant.objects.filter(slug=slug).exists():
                made["tenants"].append({"tenant": slug, "created": False})
                continue
            owner = self._user(owner_email)
            tenant = services.tenant_create(
                slug=slug, name=name, owner=owner, actor=services.SYSTEM
            )
            member = self._user(member_email)
            services.membership_add(
                tenant=tenant, user=member, role=member_role, actor=services.Actor(user=owner)
            )
            _, secret = services.api_key_create(
                tenant=tenant, name="demo", scopes=scopes, actor=services.Actor(user=owner)
            )
            made["tenants"].append(
                {
                    "tenant": slug,
                    "created": True,
                    "owner": owner_email,
                    "member": member_email,
                    "api_key": secret,
                }
            )
        if json:
            emit(self, made, as_json=True)
            return
        self.stdout.write(f"Demo users sign in with password '{DEMO_PASSWORD}'.")
        for t in made["tenants"]:
            if not t["created"]:
                self.stdout.write(f"{t['tenant']}: already seeded (keys are shown only once).")
                continue
            self.stdout.write(f"{t['tenant']}: owner {t['owner']}, member {t['member']}")
            self.stdout.write(f"  API key (shown once): {t['api_key']}")

    def _user(self, email: str) -> User:
        user = User.objects.filter(email=email).first()
        return user or services.user_create(email=email, password=DEMO_PASSWORD)
