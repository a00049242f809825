"""The web process caps glibc's malloc arenas (``config/wsgi.py``): with one per thread, the
upload bench's web peak wandered over its 256 MiB target. An operator's MALLOC_ARENA_MAX
wins, and a C library without ``mallopt`` (musl, macOS) leaves the process as it is."""

from __future__ import annotations

from config import wsgi


class _Glibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return 1


def test_the_web_process_caps_malloc_arenas_unless_the_operator_chose(monkeypatch):
    libc = _Glibc()
    monkeypatch.setattr(wsgi.ctypes, "CDLL", lambda _name: libc)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    wsgi._limit_malloc_arenas()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    wsgi._limit_malloc_arenas()

    assert libc.calls == [(-8, 2)]  # M_ARENA_MAX, once: not over the operator's choice


def test_without_glibc_the_web_process_starts_untuned(monkeypatch):
    def no_glibc(_name):
        raise OSError("no such library")

    monkeypatch.setattr(wsgi.ctypes, "CDLL", no_glibc)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)

    wsgi._limit_malloc_arenas()  # no error: nothing to tune

    monkeypatch.setattr(wsgi.ctypes, "CDLL", lambda _name: object())  # no mallopt either
    wsgi._limit_malloc_arenas()
