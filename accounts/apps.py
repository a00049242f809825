from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and organisations"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from accounts import checks  # noqa: F401 - registers the deployment checks
        from accounts.api import schema  # noqa: F401 - registers the OpenAPI extensions

        user_login_failed.connect(_sign_in_failed, dispatch_uid="accounts.throttle.failed")
        user_logged_in.connect(_signed_in, dispatch_uid="accounts.throttle.signed_in")


def _sign_in_failed(sender, credentials, request=None, **kwargs) -> None:
    from accounts import throttle
    from accounts.tenancy import client_ip

    email = credentials.get("username") or credentials.get("email")
    if email:
        throttle.record_failure(email=str(email), ip=client_ip(request) if request else None)


def _signed_in(sender, user, request=None, **kwargs) -> None:
    from accounts import throttle

    throttle.forget(user.email)
