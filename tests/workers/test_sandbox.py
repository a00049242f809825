"""Code inside the model host's sandbox reaches nothing outside it. These run hostile Python
in exactly the confinement a model host gets (same argv builder, limits and seccomp)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap

import pytest

from workers import sandbox

CANARY = "modelmarket-canary-secret"


def run_confined(
    code: str,
    *,
    bwrap: bool = True,
    memory: int | None = 2 * 1024**3,
    timeout: float = 60,
    device: str = "cpu",
) -> dict:
    """Run ``code`` in the sandbox; it prints one JSON object as its last line."""
    limits = sandbox.Limits(memory_bytes=memory, cpu_seconds=30)
    fd = sandbox.seccomp_memfd() if bwrap else None
    try:
        argv, env = sandbox.host_command(
            limits=limits, device=device, seccomp_fd=fd, code=textwrap.dedent(code)
        )
        result = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            pass_fds=(fd,) if fd else (),
            preexec_fn=None if bwrap else sandbox.fallback_preexec,
        )
    finally:
        if fd is not None:
            os.close(fd)
    assert result.stdout.strip(), result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def canary(tmp_path) -> str:
    path = tmp_path / "canary.txt"
    path.write_text(CANARY)
    return str(path)


@pytest.fixture(params=["bwrap", "fallback"])
def mode(request, monkeypatch):
    if request.param == "bwrap":
        assert sandbox.bubblewrap(), "bubblewrap must be installed (Debian package bubblewrap)"
        return True
    monkeypatch.setattr(sandbox, "bubblewrap", lambda: None)
    return False


def test_sandbox_cannot_read_files_outside(canary):
    out = run_confined(f"""
        import json, os
        found = {{}}
        for path in [{canary!r}, "/work/main/var/keyring.json", "/etc/passwd", "/root"]:
            try:
                found[path] = open(path).read(64) if os.path.isfile(path) else os.listdir(path)
            except OSError as exc:
                found[path] = type(exc).__name__
        print(json.dumps(found))
    """)
    assert CANARY not in json.dumps(out)
    assert out[canary] == "FileNotFoundError"
    assert out["/work/main/var/keyring.json"] == "FileNotFoundError"


def test_sandbox_has_no_network():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        out = run_confined(f"""
            import json, socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=3)
                result = "connected"
            except OSError as exc:
                result = type(exc).__name__
            print(json.dumps({{"result": result}}))
        """)
    finally:
        listener.close()
    assert out["result"] != "connected"


def test_sandbox_environment_is_empty(mode, monkeypatch):
    monkeypatch.setenv("DJANGO_SECRET_KEY", "super-secret")
    out = run_confined(
        """
        import json, os
        print(json.dumps(dict(os.environ)))
    """,
        bwrap=mode,
    )
    assert "super-secret" not in json.dumps(out)
    assert set(out) <= HOST_ENVIRONMENT
    assert out["MM_HOST_DEVICE"] == "cpu"


HOST_ENVIRONMENT = {
    "MM_HOST_THREADS",
    "MM_HOST_DEVICE",
    "MM_HOST_POLL_MICROSECONDS",
    "USER",
    "LOGNAME",
    "OMP_NUM_THREADS",
    "PYTHONDONTWRITEBYTECODE",
    "HOME",
    "PATH",
    "LC_CTYPE",
    "PWD",
}


def test_a_gpu_host_keeps_only_the_cuda_variables_of_the_worker(mode, monkeypatch):
    """A GPU worker's host learns which GPU it is pinned to and where the driver's libraries
    are, and nothing else of the worker's environment."""
    monkeypatch.setenv("DJANGO_SECRET_KEY", "super-secret")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/lib")
    out = run_confined(
        """
        import json, os
        print(json.dumps(dict(os.environ)))
    """,
        bwrap=mode,
        memory=None,
        device="cuda",
    )
    assert "super-secret" not in json.dumps(out)
    assert out["CUDA_VISIBLE_DEVICES"] == "1" and out["MM_HOST_DEVICE"] == "cuda"
    assert set(out) <= HOST_ENVIRONMENT | {"CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"}


def test_sandbox_cannot_start_processes(mode):
    out = run_confined(
        """
        import json, os, subprocess, threading
        result = {}
        try:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            result["fork"] = "forked"
        except OSError as exc:
            result["fork"] = type(exc).__name__
        try:
            subprocess.run(["/bin/true"])
            result["subprocess"] = "ran"
        except OSError as exc:
            result["subprocess"] = type(exc).__name__
        t = threading.Thread(target=lambda: None)
        t.start(); t.join()
        result["threads"] = "ok"
        print(json.dumps(result))
    """,
        bwrap=mode,
    )
    assert out == {"fork": "PermissionError", "subprocess": "PermissionError", "threads": "ok"}


def test_sandbox_memory_is_limited(mode):
    out = run_confined(
        """
        import json
        try:
            block = bytearray(8 * 1024**3)
            result = "allocated"
        except MemoryError:
            result = "MemoryError"
        print(json.dumps({"result": result}))
    """,
        bwrap=mode,
    )
    assert out["result"] == "MemoryError"


def test_sandbox_filesystem_is_read_only_but_tmp():
    """/dev too: a writable /dev/shm (a tmpfs, which bubblewrap 0.8 cannot size) let a model
    keep any amount of memory in files that no limit counted. /tmp is counted instead (the
    worker's memory watch), as torch needs a writable temporary directory."""
    out = run_confined("""
        import json, os, sys
        result = {}
        for path in ["/app/inference/evil.py", sys.prefix + "/evil", "/usr/evil", "/tmp/ok",
                     "/dev/shm/hog", "/dev/hog"]:
            try:
                open(path, "w").write("x")
                result[path] = "written"
            except OSError as exc:
                result[path] = type(exc).__name__
        with open("/dev/null", "w") as null:  # the device nodes still work
            result["null"] = null.write("x")
        result["uid"] = os.getuid()
        print(json.dumps(result))
    """)
    assert out.pop("/tmp/ok") == "written"
    assert out.pop("null") == 1
    assert out.pop("uid") == sandbox.NOBODY
    assert set(out.values()) <= {"OSError", "PermissionError", "FileNotFoundError"}, out


def _filter_answer(program: bytes, nr: int, arch: int, flags: int = 0) -> int:
    """What the seccomp filter returns for one system call: the classic BPF it is made of
    (load, jump if equal / at least / any bit set, return), run on seccomp_data."""
    import struct

    data = struct.pack("<iIQQ", nr, arch, 0, flags)  # nr, arch, ip, args[0]
    insns = [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x06:
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        pc += 1


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the x32 ABI is x86-64's")
def test_the_filter_refuses_the_x32_numbers_of_every_call():
    """On a kernel built with x32, fork or unshare under their x32 numbers (bit 30 set) got
    past rules written for the 64-bit numbers."""
    import errno

    program, arch, x32 = sandbox.seccomp_program(), 0xC000003E, 0x40000000
    allow, refuse = 0x7FFF0000, 0x00050000

    assert _filter_answer(program, 57, arch) == refuse | errno.EPERM  # fork
    assert _filter_answer(program, 0, arch) == allow  # read
    assert _filter_answer(program, 56, arch, flags=0x00010000) == allow  # a thread
    assert _filter_answer(program, 56, arch) == refuse | errno.EPERM  # a process
    for nr in (57, 272, 56, 0):  # fork, unshare, clone, read
        assert _filter_answer(program, x32 | nr, arch) == refuse | errno.ENOSYS
