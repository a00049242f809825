"""How a model host process is confined.

Under bubblewrap: new user, PID, network, IPC, UTS and cgroup namespaces (no network at all),
an empty environment, a private ``/tmp``, only the Python runtime, ``inference/runtime`` and
``inference/compression`` mounted read-only, the unprivileged user ``nobody``, resource limits
(address space, CPU time, open files, file size) and a seccomp filter that refuses to create
processes, trace or re-namespace. On a GPU worker only the NVIDIA device nodes are added.

Where bubblewrap is missing (a developer laptop) the host is a plain child process with the
same empty environment, limits and seccomp filter, and a loud warning; production settings
refuse to run that way (``MM_REQUIRE_SANDBOX``).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import logging
import os
import platform
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    memory_bytes: int | None = 8 * 1024**3  # address space; None on CUDA hosts
    cpu_seconds: int = 3600
    open_files: int = 256
    file_bytes: int = 64 * 1024**2
    threads: int = 1


# --- seccomp ------------------------------------------------------------------------------

_ARCH = {
    # audit arch, {syscall: errno}, clone syscall number
    "x86_64": (
        0xC000003E,
        {
            57: errno.EPERM,
            58: errno.EPERM,
            435: errno.ENOSYS,
            101: errno.EPERM,
            272: errno.EPERM,
            308: errno.EPERM,
            165: errno.EPERM,
        },
        56,
    ),
    "aarch64": (
        0xC00000B7,
        {435: errno.ENOSYS, 117: errno.EPERM, 97: errno.EPERM, 268: errno.EPERM, 40: errno.EPERM},
        220,
    ),
}
# x86-64's x32 ABI: the same calls under these numbers (bit 30 set), which the rules below,
# written for the 64-bit numbers, would not match; refused outright where the kernel has x32.
_X32_SYSCALL_BIT = 0x40000000
_CLONE_THREAD = 0x00010000
_RET_ALLOW, _RET_ERRNO, _RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp_program() -> bytes:
    """A classic BPF seccomp filter: fork, vfork, ptrace, unshare, setns and mount fail;
    clone is allowed only for threads (clone3 answers ENOSYS so libc falls back to clone); on
    x86-64 every x32 system call fails."""
    machine = platform.machine()
    audit_arch, blocked, clone_nr = _ARCH[machine]
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog = [_insn(ld_abs, 4), _insn(jeq, audit_arch, 1, 0), _insn(ret, _RET_KILL), _insn(ld_abs, 0)]
    if machine == "x86_64":
        prog += [_insn(jge, _X32_SYSCALL_BIT, 0, 1), _insn(ret, _RET_ERRNO | errno.ENOSYS)]
    for nr, code in blocked.items():
        prog += [_insn(jeq, nr, 0, 1), _insn(ret, _RET_ERRNO | code)]
    prog += [
        _insn(jeq, clone_nr, 0, 4),
        _insn(ld_abs, 16),  # low 32 bits of args[0]: the clone flags
        _insn(jset, _CLONE_THREAD, 1, 0),
        _insn(ret, _RET_ERRNO | errno.EPERM),
        _insn(ret, _RET_ALLOW),
        _insn(ret, _RET_ALLOW),
    ]
    return b"".join(prog)


def _install_seccomp_here() -> None:
    """Install the filter in this process (the fallback path, in the child before exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    program = seccomp_program()
    buffer = ctypes.create_string_buffer(program)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(SECCOMP)")


# --- the command line ---------------------------------------------------------------------


def bubblewrap() -> str | None:
    return shutil.which("bwrap")


def _python_paths() -> list[str]:
    """What the interpreter needs: its installation and the virtualenv's site-packages."""
    paths = {sys.base_prefix, sys.prefix}
    return sorted(p for p in paths if p and not p.startswith("/usr"))


CHILD_CODE = (
    "import sys; sys.path[:0] = {paths!r}; from inference.runtime.serve import main; main()"
)


def _site_packages() -> list[str]:
    import site

    return [p for p in site.getsitepackages() if os.path.isdir(p)]


# What a CUDA host keeps of the worker's environment: the GPU it is pinned to, and where the
# driver's libraries are when the loader's cache does not list them (NVIDIA's container
# runtime mounts them under /usr/local/nvidia, for instance). Nothing else crosses over.
CUDA_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "LD_LIBRARY_PATH")


def cuda_env() -> dict[str, str]:
    return {name: os.environ[name] for name in CUDA_ENV if name in os.environ}


# Read-only paths the NVIDIA driver reads while CUDA starts in a new user namespace (without
# them cuInit fails with CUDA_ERROR_OPERATING_SYSTEM): its modules' and the PCI devices'
# sysfs entries and its procfs. Hardware facts only; MM_HOST_GPU_BINDS (colon-separated)
# replaces the list where a driver stack needs others.
GPU_BINDS = (
    "/proc/driver/nvidia",
    "/proc/driver/nvidia-uvm",
    "/sys/module/nvidia",
    "/sys/module/nvidia_uvm",
    "/sys/bus/pci",
    "/sys/devices",
    "/sys/dev/char",
)


def gpu_binds() -> list[str]:
    configured = os.environ.get("MM_HOST_GPU_BINDS")
    paths = configured.split(":") if configured is not None else GPU_BINDS
    return [p for p in paths if p and os.path.exists(p)]


def _library_dirs() -> list[str]:
    """LD_LIBRARY_PATH entries outside /usr, which the sandbox does not otherwise mount."""
    entries = os.environ.get("LD_LIBRARY_PATH", "").split(":")
    return [
        p for p in entries if p.startswith("/") and not p.startswith("/usr/") and os.path.isdir(p)
    ]


def host_command(
    *,
    limits: Limits,
    device: str,
    seccomp_fd: int | None,
    code: str | None = None,
    poll_microseconds: int = 0,
) -> tuple[list[str], dict[str, str]]:
    """The argv of one model host and the environment to start it with: with bubblewrap the
    host's own environment is set inside the sandbox (``--clearenv``/``--setenv``)."""
    env = {
        "MM_HOST_THREADS": str(limits.threads),
        "OMP_NUM_THREADS": str(limits.threads),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",  # noqa: S108 - the sandbox's private tmpfs
        "PATH": "/usr/bin",
        "MM_HOST_DEVICE": device,
        "MM_HOST_POLL_MICROSECONDS": str(poll_microseconds),
        # getpass.getuser() (torch's and Triton's cache paths) reads these before asking
        # /etc/passwd, which the sandbox does not mount: without them importing torch.export
        # fails where Triton is installed (CUDA builds).
        "USER": "nobody",
        "LOGNAME": "nobody",
    }
    if device.startswith("cuda"):
        env.update(cuda_env())
    prlimit = [
        "prlimit",
        f"--cpu={limits.cpu_seconds}",
        f"--nofile={limits.open_files}",
        f"--fsize={limits.file_bytes}",
        "--core=0",
    ]
    if limits.memory_bytes:
        prlimit.append(f"--as={limits.memory_bytes}")
    bwrap = bubblewrap()
    if bwrap is None:
        code = code or CHILD_CODE.format(paths=[str(ROOT), *_site_packages()])
        # -u: C's stdio unbuffered as well as Python's (-I ignores PYTHONUNBUFFERED): what a
        # TorchScript model prints sat in a 4 KiB buffer and reached the worker's log late,
        # under whichever request was running then.
        return [*prlimit, "--", sys.executable, "-I", "-u", "-S", "-c", code], {
            **env,
            "PATH": "/usr/bin:/bin",
        }
    app = "/app"
    code = code or CHILD_CODE.format(paths=[app, *_site_packages()])
    argv = [
        *prlimit,
        "--",
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        str(NOBODY),
        "--gid",
        str(NOBODY),
        "--hostname",
        "model-host",
        "--clearenv",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/bin",
        "/bin",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",  # noqa: S108 - a private tmpfs inside the sandbox
        "--ro-bind",
        str(ROOT / "inference" / "__init__.py"),
        f"{app}/inference/__init__.py",
        "--ro-bind",
        str(ROOT / "inference" / "runtime"),
        f"{app}/inference/runtime",
        "--ro-bind",
        str(ROOT / "inference" / "compression"),
        f"{app}/inference/compression",
        "--chdir",
        "/tmp",  # noqa: S108
    ]
    for path in _python_paths():
        argv += ["--ro-bind", path, path]
    if os.path.exists("/etc/ld.so.cache"):
        argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    if device.startswith("cuda"):
        for node in sorted(glob.glob("/dev/nvidia*")):
            argv += ["--dev-bind", node, node]
        for path in gpu_binds():
            argv += ["--ro-bind-try", path, path]
        for path in _library_dirs():
            argv += ["--ro-bind-try", path, path]
    # Everything but /tmp read-only, including the mount points bwrap made in its root, and
    # /dev (its nodes still work). bwrap 0.8 cannot size a tmpfs: a model could hold any
    # amount of memory in files there, which the address space limit does not count (a
    # review helper held 5 GiB in /dev/shm and /tmp). /dev/shm is not needed; torch needs a
    # writable temporary directory, and the worker counts /tmp with the host's memory.
    argv += ["--remount-ro", "/", "--remount-ro", "/dev"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += [sys.executable, "-I", "-u", "-S", "-c", code]  # -u: see above
    return argv, {"PATH": "/usr/bin:/bin"}


def seccomp_memfd() -> int:
    """A file descriptor holding the filter, for ``bwrap --seccomp``."""
    fd = os.memfd_create("mm-seccomp", 0)
    os.write(fd, seccomp_program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def fallback_preexec() -> None:
    """Runs in the forked child before exec when there is no bubblewrap: its own session,
    killed when the worker dies, and the seccomp filter."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, 9, 0, 0, 0)  # SIGKILL when the worker goes away
    _install_seccomp_here()
