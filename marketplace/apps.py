from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Models, versions, listings and the vault"

    def ready(self) -> None:
        from marketplace import checks  # noqa: F401 - registers the deploy checks
