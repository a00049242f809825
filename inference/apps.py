from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Predictions and compression jobs"

    def ready(self) -> None:
        from inference import services
        from marketplace.vault.store import tenant_erasing

        tenant_erasing.connect(services.tenant_data_erase, dispatch_uid="inference.erase")
