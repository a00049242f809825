"""Modelmarket settings.

Everything comes from environment variables. The defaults need no outside service: SQLite and
files under ``var/``, and an embedded Redis server when ``REDIS_URL`` is unset. Production sets
``DJANGO_DEBUG=0``, ``DJANGO_SECRET_KEY``, ``DJANGO_ALLOWED_HOSTS``, ``DATABASE_URL``,
``REDIS_URL`` and the storage variables; see docs/deploy.md.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from config import embedded, logs

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


VAR_DIR = Path(env("MM_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", True)


def _development_secret_key() -> str:
    """A random key kept under var/ so sessions survive restarts in development."""
    path = VAR_DIR / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        key = secrets.token_urlsafe(50)
        fh.write(key)
    return key


SECRET_KEY = env("DJANGO_SECRET_KEY") or _development_secret_key()
# API keys are stored as HMAC-SHA256 digests under this key. Keep it stable: changing it
# invalidates every issued API key.
API_KEY_HMAC_KEY = env("API_KEY_HMAC_KEY") or SECRET_KEY
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files served by us: /api/docs/ works offline
    "guardian",
    "django_htmx",
    "csp",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "accounts",
    "marketplace",
    "inference",
    "billing",
    "workers",
]

MIDDLEWARE = [
    "config.logs.RequestIdMiddleware",
    "config.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.csp.PageCSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "config.htmx.BoostedPostMiddleware",
    "accounts.tenancy.CurrentTenantMiddleware",
    "config.badinput.BadInputMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.tenancy",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=int(env("DATABASE_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Connections are kept as on PostgreSQL (DATABASE_CONN_MAX_AGE): a new one per request
    # costs its connect and PRAGMAs, and closing the last one checkpoints the WAL (about
    # 7 ms of a prediction's POST on this VM, bench/inference.py --profile).
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web process read while a worker writes; the timeout turns a busy
        # database into a short wait instead of an immediate "database is locked".
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not :memory:, so a Celery worker started by the end-to-end tests shares it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "accounts.throttle.SignInThrottle",  # first: refuses while failures are over the limit
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
# No anonymous user row: signed-out visitors get nothing from guardian.
ANONYMOUS_USER_NAME = None
GUARDIAN_USER_OBJ_PERMS_MODEL = "guardian.UserObjectPermission"
GUARDIAN_GROUP_OBJ_PERMS_MODEL = "guardian.GroupObjectPermission"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Vault: key-encryption keys and the artifact store ------------------------------------
# One of: MM_KMS_KEY_ID (AWS KMS), MM_KEK_RING ("kek-id:BASE64KEY,..." with the primary first),
# or a key file (MM_KEK_FILE). Development creates var/keyring.json on first start and says so.
KMS_KEY_ID = env("MM_KMS_KEY_ID")
KMS_ENDPOINT_URL = env("MM_KMS_ENDPOINT_URL") or None
KEK_RING = env("MM_KEK_RING")
KEK_FILE = Path(env("MM_KEK_FILE", str(VAR_DIR / "keyring.json")))
KEK_FILE_CREATE = env_bool("MM_KEK_FILE_CREATE", DEBUG)
ARTIFACT_BUCKET = env("MM_ARTIFACT_BUCKET")
if ARTIFACT_BUCKET:
    ARTIFACT_STORAGE = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": ARTIFACT_BUCKET,
            "endpoint_url": env("AWS_S3_ENDPOINT_URL") or None,
            "region_name": env("AWS_S3_REGION_NAME") or None,
            "file_overwrite": True,
            "default_acl": None,
            "querystring_auth": True,
            "location": env("MM_ARTIFACT_PREFIX", "artifacts"),
        },
    }
else:
    ARTIFACT_STORAGE = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": str(VAR_DIR / "artifacts"),
            "file_permissions_mode": 0o600,
            "directory_permissions_mode": 0o700,
        },
    }
ARTIFACT_CHUNK_SIZE = int(env("MM_ARTIFACT_CHUNK_SIZE", str(1024 * 1024)))
MAX_ARTIFACT_BYTES = int(env("MM_MAX_ARTIFACT_BYTES", str(20 * 1024**3)))
UPLOAD_CHUNK_SIZE = int(env("MM_UPLOAD_CHUNK_SIZE", str(8 * 1024 * 1024)))
UPLOAD_SESSION_TTL = timedelta(hours=int(env("MM_UPLOAD_SESSION_TTL_HOURS", "24")))
# The platform's share of every paid call; publishers get the rest.
PLATFORM_FEE_PERCENT = env("MM_PLATFORM_FEE_PERCENT", "20")
PLATFORM_CURRENCY = env("MM_PLATFORM_CURRENCY", "usd")
# What a compression job costs its owner per compute-second (a Decimal string).
COMPRESSION_PRICE_PER_SECOND = env("MM_COMPRESSION_PRICE_PER_SECOND", "0.002")
# Compression jobs run on this queue (the quantized kernels are CPU ones), within this deadline.
COMPRESSION_QUEUE = env("MM_COMPRESSION_QUEUE", "cpu")
COMPRESSION_TIMEOUT = float(env("MM_COMPRESSION_TIMEOUT", "1800"))
# The most compression jobs one organisation may have queued or running at once: more is a
# 429, so one tenant cannot fill the workers (and its spend cap can be passed by at most this
# many jobs' time limits).
COMPRESSION_MAX_ACTIVE = int(env("MM_COMPRESSION_MAX_ACTIVE", "3"))
# A running job's heartbeat is touched every second; one silent this long lost its worker and
# is claimed again by its redelivered task (or the beat's sweep).
COMPRESSION_JOB_LOST_SECONDS = float(env("MM_COMPRESSION_JOB_LOST_SECONDS", "120"))

STATIC_URL = "static/"
STATIC_ROOT = Path(env("DJANGO_STATIC_ROOT", str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env("DJANGO_MEDIA_ROOT", str(VAR_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "artifacts": ARTIFACT_STORAGE,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

EMAIL_BACKEND = env("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env("DJANGO_DEFAULT_FROM_EMAIL", "Modelmarket <no-reply@modelmarket.local>")
SITE_URL = env("MM_SITE_URL", "http://127.0.0.1:8000")

# --- Redis and Celery -------------------------------------------------------------------
EMBEDDED_REDIS = not env("REDIS_URL")
REDIS_URL = env("REDIS_URL") or embedded.ensure_redis(VAR_DIR / "redis")

CELERY_BROKER_URL = embedded.celery_url(REDIS_URL)
CELERY_RESULT_BACKEND = embedded.celery_url(REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = int(env("CELERY_TASK_SOFT_TIME_LIMIT", "300"))
CELERY_TASK_TIME_LIMIT = int(env("CELERY_TASK_TIME_LIMIT", "330"))
# Must exceed the longest task (hard limit) or Redis redelivers a task still running.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_TASK_TIME_LIMIT * 4,
    # Look for messages whose visibility timeout ran out (a dead worker's) every 10 s rather
    # than kombu's default of every 10th sweep (100 s): one small sorted-set read each time.
    "unacked_restore_throttle": 1,
}
CELERY_RESULT_EXPIRES = timedelta(hours=1)
# Celery logged whatever reached the worker's stderr line by line as log records: one crash's
# traceback became 1,336 JSON records (670 of them "^"). Our code logs through logging.
CELERY_WORKER_REDIRECT_STDOUTS = False
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE = {
    "expire-uploads": {"task": "marketplace.expire_uploads", "schedule": 15 * 60},
    "purge-prediction-data": {"task": "inference.purge_prediction_data", "schedule": 5 * 60},
    "fail-stuck-predictions": {"task": "inference.fail_stuck_predictions", "schedule": 60},
    # Webhooks whose sending failed when their prediction finished (Redis was down).
    "resend-missed-webhooks": {"task": "inference.resend_missed_webhooks", "schedule": 2 * 60},
    # Compression jobs whose worker died while the broker had not redelivered their task.
    "requeue-lost-compression-jobs": {
        "task": "inference.requeue_lost_compression_jobs",
        "schedule": 2 * 60,
    },
    # Invoices for last month, early on the 1st; then a sweep that resumes any invoice or
    # transfer a crash or an outage left half-way.
    "close-billing-period": {
        "task": "billing.close_period",
        "schedule": crontab(day_of_month="1", hour="0", minute="30"),
    },
    "resume-billing": {"task": "billing.resume", "schedule": 30 * 60},
}

# --- Model hosts (workers) ------------------------------------------------------------------
# Production refuses to run tenants' models without the bubblewrap sandbox.
REQUIRE_SANDBOX = env_bool("MM_REQUIRE_SANDBOX", not DEBUG)
MODEL_HOST_ADDRESS_SPACE = int(env("MM_HOST_ADDRESS_SPACE", str(16 * 1024**3)))
MODEL_HOST_MEMORY_LIMIT = int(env("MM_HOST_MEMORY_LIMIT", str(4 * 1024**3)))
MODEL_HOST_CPU_SECONDS = int(env("MM_HOST_CPU_SECONDS", "3600"))
MODEL_HOST_THREADS = int(env("MM_HOST_THREADS", "1"))
MODEL_HOST_PRESTART = int(env("MM_HOST_PRESTART", "1"))
MODEL_HOST_MAX_REQUESTS = int(env("MM_HOST_MAX_REQUESTS", "100000"))
MODEL_HOST_PING_SECONDS = float(env("MM_HOST_PING_SECONDS", "30"))
MODEL_CACHE_BYTES = int(env("MM_MODEL_CACHE_BYTES", str(2 * 1024**3)))
# What one model host process costs besides its model (Python and torch), counted against
# MODEL_CACHE_BYTES for every loaded host.
MODEL_HOST_OVERHEAD_BYTES = int(env("MM_HOST_OVERHEAD_BYTES", str(300 * 1024**2)))
MODEL_LOAD_TIMEOUT = float(env("MM_MODEL_LOAD_TIMEOUT", "120"))
MODEL_REQUEST_TIMEOUT = float(env("MM_MODEL_REQUEST_TIMEOUT", "30"))
# The breaker (workers.batching.Breaker): after this many requests in a row to one version
# end in a timeout, a crash or the memory limit, the version is not run for BREAKER_SECONDS
# (its queued predictions fail at once, unbilled; new ones are refused with 503).
BREAKER_FAILURES = int(env("MM_BREAKER_FAILURES", "3"))
BREAKER_SECONDS = float(env("MM_BREAKER_SECONDS", "60"))
# A prediction still running this long after it started was lost (a worker stuck or gone
# where nothing redelivers it): the beat fails it, unbilled. By default past the longest a
# worker waits for one: a model load and a batch run twice.
PREDICTION_STUCK_SECONDS = float(
    env(
        "MM_PREDICTION_STUCK_SECONDS",
        str(int(MODEL_LOAD_TIMEOUT + 2 * MODEL_REQUEST_TIMEOUT + 120)),
    )
)
# The most tensor bytes one prediction's output may have (checked in the model host before it
# encodes them; a host that sends more is killed): a tiny input can ask for any size.
MAX_OUTPUT_BYTES = int(env("MM_MAX_OUTPUT_BYTES", str(64 * 1024**2)))
VALIDATION_QUEUE = env("MM_VALIDATION_QUEUE", "cpu")
READYZ_WORKER_TIMEOUT = float(env("MM_READYZ_WORKER_TIMEOUT", "1"))
# /readyz answers from its last check for this long (per web process), and while a check runs:
# probes are free to send, so a flood of them must not hold web threads or ping the workers.
READYZ_REUSE_SECONDS = float(env("MM_READYZ_REUSE_SECONDS", "2"))

# --- Inference ------------------------------------------------------------------------------
INFERENCE_QUEUE = env("MM_INFERENCE_QUEUE", "cpu")
MAX_QUEUE_DEPTH = int(env("MM_MAX_QUEUE_DEPTH", "1000"))
RATE_LIMIT_PER_MINUTE = int(env("MM_RATE_LIMIT_PER_MINUTE", "600"))
# Model-extraction flags (inference/abuse.py): a key of another organisation is flagged for
# the publisher once per model and window when it has been refused this many times by the
# rate limit, with at least this many calls of which this share had distinct inputs; a key is
# looked at again (a count of its distinct inputs) at most once per EXTRACTION_RECHECK_SECONDS.
EXTRACTION_WINDOW_SECONDS = int(env("MM_EXTRACTION_WINDOW_SECONDS", "3600"))
EXTRACTION_FLAG_REJECTIONS = int(env("MM_EXTRACTION_FLAG_REJECTIONS", "20"))
EXTRACTION_MIN_CALLS = int(env("MM_EXTRACTION_MIN_CALLS", "10"))
EXTRACTION_DISTINCT_SHARE = float(env("MM_EXTRACTION_DISTINCT_SHARE", "0.9"))
EXTRACTION_RECHECK_SECONDS = int(env("MM_EXTRACTION_RECHECK_SECONDS", "60"))
MAX_WAIT_SECONDS = 60
OIP_TIMEOUT = float(env("MM_OIP_TIMEOUT", "30"))
PREDICTION_DATA_TTL = timedelta(seconds=int(env("MM_PREDICTION_DATA_TTL_SECONDS", "3600")))
IDEMPOTENCY_TTL = timedelta(hours=24)
MAX_INPUT_BYTES = int(env("MM_MAX_INPUT_BYTES", str(8 * 1024 * 1024)))
BATCH_MAX_SIZE = int(env("MM_BATCH_MAX_SIZE", "32"))
BATCH_MAX_DELAY_MS = float(env("MM_BATCH_MAX_DELAY_MS", "2"))
# How long a process reuses a resolved model, version and listing for predictions
# (inference/catalog.py); changes made in the process clear it at once.
INFERENCE_CACHE_SECONDS = float(env("MM_INFERENCE_CACHE_SECONDS", "5"))
# The predictions fast path (inference/dispatch.py): workers on the inference queue take
# prediction ids from a Redis list with this many threads; off, every prediction is a Celery task.
INFERENCE_DIRECT = env_bool("MM_INFERENCE_DIRECT", True)
INFERENCE_DIRECT_THREADS = int(env("MM_INFERENCE_DIRECT_THREADS", "32"))
WEBHOOK_TIMEOUT = float(env("MM_WEBHOOK_TIMEOUT", "10"))
WEBHOOK_RETRY_DELAYS = [
    float(s) for s in env("MM_WEBHOOK_RETRY_DELAYS", "5,30,120,600,1800").split(",")
]
# Development may deliver webhooks to localhost; production refuses private addresses (SSRF).
WEBHOOK_ALLOW_PRIVATE = env_bool("MM_WEBHOOK_ALLOW_PRIVATE", DEBUG)

# --- REST API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_METADATA_CLASS": "accounts.api.metadata.Metadata",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "accounts.authentication.TenantSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.permissions.TenantMember"],
    "DEFAULT_PARSER_CLASSES": ["accounts.api.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["accounts.api.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "accounts.api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "accounts.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append(
        "rest_framework.renderers.BrowsableAPIRenderer"
    )

SPECTACULAR_SETTINGS = {
    "TITLE": "Modelmarket API",
    "DESCRIPTION": "Publish, version and run PyTorch models. Authenticate with "
    "`Authorization: Bearer mm_live_…`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",  # the default, kept
        "accounts.api.schema.document_errors",
    ],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Security -----------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = int(env("DJANGO_HSTS_SECONDS", "0" if DEBUG else "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_TLS_PROXY", False) else None
)
# The proxies in front of the web (addresses or networks, comma-separated): a request from
# one of them is from the client its X-Forwarded-For names, read from the right past every
# trusted hop (accounts.tenancy.client_ip). Empty (the default): the socket's peer, and
# X-Forwarded-For is never read, since any caller can write it. Behind a proxy left unset,
# every request is from the proxy's address: the sign-in throttle then locks everyone out
# at once, and key allowlists see only the proxy.
TRUSTED_PROXIES = [p.strip() for p in env("MM_TRUSTED_PROXIES", "").split(",") if p.strip()]
for _proxy in TRUSTED_PROXIES:  # refused at start, not as a 500 on every request
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"MM_TRUSTED_PROXIES: '{_proxy}' is no address or network (10.0.0.0/8, 127.0.0.1)."
        ) from None
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Pages (not API responses) carry this policy (config/csp.py): everything from this site, no
# inline scripts, no framing. Inline styles are allowed (style attributes, htmx's indicator
# styles); images from other hosts are not (a model card's would track its viewers).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:", "blob:"],  # blob: the playground's picture preview
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "frame-src": [NONE],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],
    }
}
# At least a prediction's own limit: predictions over it are 413 naming MM_MAX_INPUT_BYTES, and
# an operator raising that must not meet this one first.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(
    env("DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE", str(max(10 * 1024 * 1024, MAX_INPUT_BYTES)))
)

# --- Product settings ---------------------------------------------------------------------
# How long a process may reuse a verified API key row (see accounts/keycache.py); a revoked key
# or suspended tenant is refused by other processes within this many seconds.
API_KEY_CACHE_SECONDS = float(env("MM_API_KEY_CACHE_SECONDS", "10"))
API_KEY_ROTATION_GRACE = timedelta(hours=int(env("MM_API_KEY_ROTATION_GRACE_HOURS", "24")))
INVITATION_TTL = timedelta(days=int(env("MM_INVITATION_TTL_DAYS", "7")))
# Signing in is refused for an address with this many failed sign-ins in the window, and for a
# client address with that many (accounts/throttle.py).
SIGNIN_THROTTLE_WINDOW = timedelta(minutes=int(env("MM_SIGNIN_THROTTLE_MINUTES", "15")))
SIGNIN_FAILURES_PER_ACCOUNT = int(env("MM_SIGNIN_FAILURES_PER_ACCOUNT", "10"))
SIGNIN_FAILURES_PER_IP = int(env("MM_SIGNIN_FAILURES_PER_IP", "50"))
# Password reset e-mails in the same window: to one address, and asked for from one client.
PASSWORD_RESETS_PER_ACCOUNT = int(env("MM_PASSWORD_RESETS_PER_ACCOUNT", "3"))
PASSWORD_RESETS_PER_IP = int(env("MM_PASSWORD_RESETS_PER_IP", "20"))

# --- Observability (config/logs.py, config/metrics.py) ----------------------------------------
# MM_LOG_FORMAT=json: one JSON object per line, each with the request id; default plain text.
LOGGING = logs.logging_config(
    fmt=env("MM_LOG_FORMAT", "plain"), level=env("DJANGO_LOG_LEVEL", "INFO")
)
# /metrics answers a staff session, or a scraper sending "Authorization: Bearer <this>".
METRICS_TOKEN = env("MM_METRICS_TOKEN")
# Each Celery worker serves its own metrics here (unset: none); bind a private address only.
WORKER_METRICS_PORT = int(env("MM_WORKER_METRICS_PORT", "0"))
WORKER_METRICS_ADDR = env("MM_WORKER_METRICS_ADDR", "127.0.0.1")
# Models a worker names in its per-model metrics; the rest are counted as "other" (tenants
# create models, so a label per model would let them grow the metrics without bound).
METRICS_MODEL_LABELS = int(env("MM_METRICS_MODEL_LABELS", "200"))
# Workers write a heartbeat (device, queues, loaded models, memory) to Redis this often.
WORKER_HEARTBEAT_SECONDS = float(env("MM_WORKER_HEARTBEAT_SECONDS", "10"))
# Staff sign in to the admin with a TOTP code as well as their password (django-otp).
ADMIN_REQUIRE_2FA = env_bool("MM_ADMIN_REQUIRE_2FA", False)

# --- billing (Stripe) -------------------------------------------------------------------------
# Without STRIPE_SECRET_KEY the ledger still records every call; invoices wait in "pending"
# until Stripe is configured and the period is closed again.
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY")
STRIPE_PUBLISHABLE_KEY = env("STRIPE_PUBLISHABLE_KEY")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET")
STRIPE_API_BASE = env("STRIPE_API_BASE") or None  # a local fake (localstripe) in tests
STRIPE_API_VERSION = env("STRIPE_API_VERSION") or None  # None: the SDK's own version
STRIPE_JS_URL = env("STRIPE_JS_URL", "https://js.stripe.com/v3/")
STRIPE_MAX_NETWORK_RETRIES = int(env("STRIPE_MAX_NETWORK_RETRIES", "2"))
# Paid listings need a payment method on file (default: whenever Stripe is configured).
PAYMENT_METHOD_REQUIRED = env_bool("MM_PAYMENT_METHOD_REQUIRED", bool(STRIPE_SECRET_KEY))
BILLING_GRACE_PERIOD = timedelta(days=int(env("MM_BILLING_GRACE_DAYS", "7")))
# How long one process may hold an invoice while it takes it through Stripe; a crashed
# collector's hold lapses after this.
BILLING_COLLECT_LEASE = float(env("MM_BILLING_COLLECT_LEASE_SECONDS", "300"))
