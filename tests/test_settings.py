"""Production differs from development only by environment variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _deploy_check(tmp_path, **variables: str) -> subprocess.CompletedProcess:
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("DJANGO_ALLOW_ASYNC_UNSAFE", "API_KEY_HMAC_KEY")
        },
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "x" * 64 + "production-secret-0123456789",
        "DJANGO_ALLOWED_HOSTS": "models.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        "REDIS_URL": os.environ["REDIS_URL"],
        "MM_KEK_RING": "kek-prod-1:" + "A" * 43 + "=",
        "MM_VAR_DIR": str(tmp_path),
        **variables,
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_check_passes_with_production_variables(tmp_path):
    result = _deploy_check(tmp_path, API_KEY_HMAC_KEY="y" * 64 + "api-key-digests-0123")

    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_check_asks_for_a_key_of_its_own_for_api_key_digests(tmp_path):
    """It passed with API_KEY_HMAC_KEY unset (the digests then hang on the session secret,
    and rotating that invalidates every API key), which docs/deploy.md calls required."""
    result = _deploy_check(tmp_path)

    assert result.returncode != 0
    assert "accounts.W001" in result.stderr and "Set API_KEY_HMAC_KEY" in result.stderr


def test_embedded_redis_is_used_when_redis_url_is_unset(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["MM_VAR_DIR"] = str(tmp_path)
    code = (
        "import django, redis; django.setup(); from django.conf import settings; "
        "print(settings.EMBEDDED_REDIS, redis.Redis.from_url(settings.REDIS_URL).ping())"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        )
        assert result.stdout.strip() == "True True", result.stderr
    finally:
        from config import embedded

        embedded.stop_redis(tmp_path / "redis")
