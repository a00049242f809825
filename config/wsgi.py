import ctypes
import os

from django.core.wsgi import get_wsgi_application

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


_limit_malloc_arenas()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()
