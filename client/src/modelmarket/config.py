"""Where the key, the server address and the resumable-upload state live.

The key comes from, in order: the ``api_key`` argument, ``MM_API_KEY``, then the config file
that ``mm login`` writes (``$MM_CONFIG_DIR`` or ``$XDG_CONFIG_HOME/modelmarket`` or
``~/.config/modelmarket``, file ``config.json``, mode 0600). The server address likewise from
``base_url``, ``MM_BASE_URL``, the config file, then ``http://localhost:8000``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmarket.errors import UsageError

DEFAULT_BASE_URL = "http://localhost:8000"


def config_dir() -> Path:
    if os.environ.get("MM_CONFIG_DIR"):
        return Path(os.environ["MM_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "modelmarket"


def state_dir() -> Path:
    """Resumable uploads remember their sessions here (one small file per file's SHA-256)."""
    if os.environ.get("MM_STATE_DIR"):
        return Path(os.environ["MM_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "modelmarket"


def max_retries() -> int:
    """How many times to retry a refused or unanswered request: ``MM_MAX_RETRIES``, or 5."""
    value = os.environ.get("MM_MAX_RETRIES", "5")
    try:
        return max(0, int(value))
    except ValueError:
        raise UsageError(f"MM_MAX_RETRIES must be a whole number, not '{value}'.") from None


def config_path() -> Path:
    return config_dir() / "config.json"


def read_config() -> dict[str, Any]:
    path = config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"Cannot read {path}: {exc.strerror}.") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise UsageError(f"{path} is not valid JSON; fix it or run `mm login` again.") from None
    return data if isinstance(data, dict) else {}


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so only the owner can read it, atomically (a reader never sees half a
    file, and the secret is never in a file with looser permissions, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o600)  # in case the file existed with other bits
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_config(data: dict[str, Any]) -> Path:
    path = config_path()
    write_private_json(path, data)
    return path


@dataclass(frozen=True)
class Settings:
    api_key: str | None
    base_url: str
    key_source: str  # "argument", "MM_API_KEY", the config file's path, or "none"


def resolve(api_key: str | None = None, base_url: str | None = None) -> Settings:
    """The key and server address to use, and where the key came from."""
    file = read_config()
    if api_key:
        source = "argument"
    elif os.environ.get("MM_API_KEY"):
        api_key, source = os.environ["MM_API_KEY"], "MM_API_KEY"
    elif file.get("api_key"):
        _refuse_if_readable(config_path())  # only when the key in it is about to be used
        api_key, source = file["api_key"], str(config_path())
    else:
        source = "none"
    url = base_url or os.environ.get("MM_BASE_URL") or file.get("base_url")
    return Settings(api_key=api_key or None, base_url=url or DEFAULT_BASE_URL, key_source=source)


def _refuse_if_readable(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"{path} holds an API key but others can read it (mode {stat.filemode(mode)}). "
            f"Run `chmod 600 {path}` or `mm login` again."
        )
