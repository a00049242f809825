import ctypes
import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

# glibc's malloc gives each thread that allocates its own arena (up to 8 per core) and keeps
# what is freed in it, so a threaded web process (the Procfile's gunicorn runs 8 threads)
# holds tens of MiB more than it uses once its threads have handled large requests: uploads
# peaked at 262-295 MiB in bench/upload.py, 209 MiB with two arenas, at the same speed.
# An explicit MALLOC_ARENA_MAX is left to win.
_M_ARENA_MAX = -8


def _limit_malloc_arenas(arenas: int = 2) -> None:
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return
    mallopt(_M_ARENA_MAX, arenas)


def _freeze_loaded_objects() -> None:
    """Import every view now and take what is loaded out of the cyclic collector's full
    passes (``gc.freeze``): those walked the app's ~140,000 objects each time, about 80 ms on
    our reference VM during which every request in the process stood still. The views are
    otherwise imported by the first request, after the freeze."""
    get_resolver().url_patterns  # noqa: B018 - imports the URLconf and every view
    gc.freeze()


_limit_malloc_arenas()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()
_freeze_loaded_objects()
