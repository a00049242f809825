"""Throughput and memory of the artifact vault's streaming encryption (AES-256-GCM STREAM).

Encrypts and decrypts one file through ``marketplace.vault`` and compares that, in the same
interleaved rounds, with a plain read-and-copy of the same file and with raw AES-GCM
(``cryptography``'s ``AESGCM``) on in-memory 1 MiB buffers, for the same number of bytes:

- copy:             read the plaintext file in 1 MiB pieces, write them to another file
- encrypt_stream:   plaintext file -> ciphertext file (the upload path)
- decrypt_stream:   ciphertext file -> each yielded chunk written to a file (the download path)
- decrypt_to_bytes: ciphertext file -> one bytes object, dropped at once (the worker's path)
- AES-GCM:          encrypt / decrypt of 1 MiB buffers in memory, no files

Target: streaming decryption at least 0.8x the plain copy, so that the disk, not the cipher,
is the limit. Every file operation reads a file that is in the page cache and writes through
it; outputs are flushed to disk between operations (outside the clock, unless ``--fsync``) so
that one operation's writeback is not billed to the next. Peak memory of the streaming paths is
measured in a fresh interpreter per operation (peak RSS above the baseline after imports).
Target: under 64 MiB.

    python bench/vault.py [--quick] [--json PATH] [--fsync] [--profile]

Files live in a temporary directory (``$TMPDIR``, else /tmp) that is removed at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script, the project is not on the path

from marketplace.vault.stream import (  # noqa: E402  (needs the path above)
    DEFAULT_CHUNK_SIZE,
    TAG_SIZE,
    decrypt_stream,
    decrypt_to_bytes,
    encrypt_stream,
)

MiB = 1024 * 1024
PIECE = MiB  # read size of the copy, of encrypt_stream's reads, and the raw AES-GCM buffer
assert PIECE == DEFAULT_CHUNK_SIZE, "the comparison assumes the vault's default chunk size"
TARGET_DECRYPT_OVER_COPY = 0.8
TARGET_PEAK_MIB = 64.0
ARTIFACT_ID = "bench-artifact-0123456789abcdef"
KEY_ID = "bench-key"
# The associated data the vault binds into every chunk: a SHA-256 digest plus the artifact id.
RAW_AD = bytes(32) + ARTIFACT_ID.encode()


@dataclass(frozen=True)
class Plan:
    size: int
    rounds: int


FULL = Plan(size=1024 * MiB, rounds=7)
QUICK = Plan(size=256 * MiB, rounds=5)

COPY = "copy"
ENCRYPT = "encrypt_stream"
DECRYPT = "decrypt_stream"
TO_BYTES = "decrypt_to_bytes"
RAW_ENCRYPT = "aesgcm_encrypt"
RAW_DECRYPT = "aesgcm_decrypt"
LABELS = {
    COPY: "plain copy (file -> file)",
    ENCRYPT: "encrypt_stream (file -> file)",
    DECRYPT: "decrypt_stream (file -> file, download)",
    TO_BYTES: "decrypt_to_bytes (file -> memory, worker)",
    RAW_ENCRYPT: "AES-GCM encrypt, 1 MiB buffers in memory",
    RAW_DECRYPT: "AES-GCM decrypt, 1 MiB buffers in memory",
}
ORDER = [COPY, ENCRYPT, DECRYPT, TO_BYTES, RAW_ENCRYPT, RAW_DECRYPT]
# Operations measured for peak memory, each in its own interpreter; decrypt_to_bytes holds the
# whole plaintext by design and is reported without a target.
MEMORY_OPS = [ENCRYPT, DECRYPT, TO_BYTES]


@dataclass(frozen=True)
class Summary:
    median_mb_s: float
    min_mb_s: float
    max_mb_s: float
    faults_per_mib: float
    """Minor page faults per MiB of plaintext: fresh memory the process touched."""


# --- the operations -------------------------------------------------------------------------


def copy_file(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        while piece := fin.read(PIECE):
            fout.write(piece)


def encrypt_file(src: Path, dst: Path, key: bytes) -> str:
    """Returns the plaintext SHA-256 that the encryptor computed on the way."""
    with src.open("rb") as fin, dst.open("wb") as fout:
        result = encrypt_stream(fin, fout, data_key=key, artifact_id=ARTIFACT_ID, key_id=KEY_ID)
    return result.plaintext_sha256


def decrypt_file(src: Path, dst: Path, key: bytes) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        for chunk in decrypt_stream(fin, data_key=key, artifact_id=ARTIFACT_ID):
            fout.write(chunk)


def decrypt_file_to_bytes(src: Path, key: bytes) -> bytes:
    with src.open("rb") as fin:
        return decrypt_to_bytes(fin, data_key=key, artifact_id=ARTIFACT_ID)


def raw_aesgcm(key: bytes, size: int, *, decrypt: bool) -> None:
    aead = AESGCM(key)
    nonce = bytes(12)
    plaintext = os.urandom(PIECE)
    if decrypt:
        sealed = aead.encrypt(nonce, plaintext, RAW_AD)
        for _ in range(size // PIECE):
            aead.decrypt(nonce, sealed, RAW_AD)
    else:
        for _ in range(size // PIECE):
            aead.encrypt(nonce, plaintext, RAW_AD)


# --- the run --------------------------------------------------------------------------------


class Workspace:
    """The files of one run. The ciphertext alternates between two names so that the rounds
    whose order is reversed (decrypt before encrypt) still read a complete one."""

    def __init__(self, root: Path, size: int, key: bytes, fsync: bool) -> None:
        self.root, self.size, self.key, self.fsync = root, size, key, fsync
        self.plaintext = root / "plaintext.bin"
        self.copied = root / "copy.out"
        self.decrypted = root / "decrypted.out"
        self.ciphertexts = [root / "cipher-0.mmv", root / "cipher-1.mmv"]
        self.latest_cipher = self.ciphertexts[0]
        self.plaintext_sha256 = self._write_plaintext()

    def _write_plaintext(self) -> str:
        digest = hashlib.sha256()
        with self.plaintext.open("wb") as f:
            for _ in range(self.size // PIECE):
                piece = os.urandom(PIECE)
                digest.update(piece)
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        return digest.hexdigest()

    def settle(self, path: Path) -> None:
        """Flush a written file to disk, so its writeback is not billed to what runs next."""
        with path.open("rb+") as f:
            os.fsync(f.fileno())

    def run(self, name: str, round_no: int) -> tuple[float, int]:
        """Run one operation; returns its seconds and the minor page faults it took."""
        outputs = {COPY: self.copied, DECRYPT: self.decrypted}
        if name == ENCRYPT:
            outputs[ENCRYPT] = self.ciphertexts[round_no % 2]
        out = outputs.get(name)
        if out is not None:
            out.unlink(missing_ok=True)  # freeing the old pages is not the operation's cost
        gc.collect()
        keep: object = None
        faults = minor_faults()
        start = time.perf_counter()
        if name == COPY:
            copy_file(self.plaintext, out)
        elif name == ENCRYPT:
            keep = encrypt_file(self.plaintext, out, self.key)
        elif name == DECRYPT:
            decrypt_file(self.latest_cipher, out, self.key)
        elif name == TO_BYTES:
            keep = decrypt_file_to_bytes(self.latest_cipher, self.key)
        else:
            raw_aesgcm(self.key, self.size, decrypt=name == RAW_DECRYPT)
        if out is not None and self.fsync:
            self.settle(out)
        seconds = time.perf_counter() - start
        faults = minor_faults() - faults
        if out is not None and not self.fsync:
            self.settle(out)
        if name == ENCRYPT:
            if keep != self.plaintext_sha256:
                raise SystemExit("encrypt_stream saw different plaintext than was written")
            self.latest_cipher = out
        elif name == TO_BYTES and len(keep) != self.size:  # type: ignore[arg-type]
            raise SystemExit("decrypt_to_bytes returned the wrong number of bytes")
        return seconds, faults

    def check_decrypted(self) -> None:
        digest = hashlib.sha256()
        with self.decrypted.open("rb") as f:
            while piece := f.read(PIECE):
                digest.update(piece)
        if digest.hexdigest() != self.plaintext_sha256:
            raise SystemExit("decrypt_stream wrote different plaintext than was encrypted")


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


Samples = dict[str, list[float]]


def measure(ws: Workspace, plan: Plan) -> tuple[Samples, Samples]:
    """A warm-up round (which also checks the round trip), then interleaved rounds, alternating
    direction so that drift and neighbours on a shared machine hit every operation alike.
    Returns MB/s and minor page faults per MiB, per operation and round."""
    for name in ORDER:
        ws.run(name, round_no=0)
    ws.check_decrypted()
    rates: Samples = {name: [] for name in ORDER}
    faults: Samples = {name: [] for name in ORDER}
    for round_no in range(plan.rounds):
        order = ORDER if round_no % 2 == 0 else ORDER[::-1]
        for name in order:
            seconds, minflt = ws.run(name, round_no)
            rates[name].append(plan.size / seconds / 1e6)
            faults[name].append(minflt / (plan.size / MiB))
    return rates, faults


def summarize(rates: list[float], faults: list[float]) -> Summary:
    return Summary(
        statistics.median(rates), min(rates), max(rates), faults_per_mib=statistics.median(faults)
    )


def measure_memory(ws: Workspace) -> dict[str, dict]:
    """Peak RSS growth of each operation in a fresh interpreter."""
    figures = {}
    for name in MEMORY_OPS:
        src = ws.plaintext if name == ENCRYPT else ws.latest_cipher
        dst = ws.root / f"memory-{name}.out"
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, str(src), str(dst)],
            input=ws.key.hex(),
            capture_output=True,
            text=True,
            check=True,
        )
        child = json.loads(proc.stdout)
        dst.unlink(missing_ok=True)
        figures[name] = {
            "baseline_mib": child["baseline_kib"] / 1024,
            "peak_mib": child["peak_kib"] / 1024,
            "growth_mib": (child["peak_kib"] - child["baseline_kib"]) / 1024,
            "source": child["source"],
        }
    return figures


def peak_rss_kib() -> tuple[int, str]:
    """This process's peak resident memory in KiB, and where the figure came from.

    Linux carries a parent's ru_maxrss into a child across fork and exec, so a child of this
    bench (which held a whole decrypted file a moment before) would report the parent's peak.
    VmHWM is the same high-water mark, kept per address space and so fresh after exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]), "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"  # KiB on Linux


def child(name: str, src: Path, dst: Path) -> None:
    """``--child``: run one operation and print the peak RSS before and after it."""
    key = bytes.fromhex(sys.stdin.read().strip())
    gc.collect()
    baseline, source = peak_rss_kib()
    if name == ENCRYPT:
        encrypt_file(src, dst, key)
    elif name == DECRYPT:
        decrypt_file(src, dst, key)
    else:
        decrypt_file_to_bytes(src, key)
    peak, _ = peak_rss_kib()
    print(json.dumps({"baseline_kib": baseline, "peak_kib": peak, "source": source}))


def available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --- profile --------------------------------------------------------------------------------


def profile_decrypt(ws: Workspace) -> dict[str, dict[str, float]]:
    """Where decrypt_stream's time goes: cProfile of one run, then the same work taken apart
    (read, AES-GCM, write, the loop's whole-chunk copies), each timed alone over the same
    amount of data, and decrypt_stream again with glibc told to keep freed memory."""
    ws.decrypted.unlink(missing_ok=True)
    profiler = cProfile.Profile()
    profiler.runcall(decrypt_file, ws.latest_cipher, ws.decrypted, ws.key)
    ws.settle(ws.decrypted)
    print(
        f"\ncProfile of decrypt_stream over {ws.size // MiB:,} MiB, file -> file "
        "(tottime: own time, excluding callees; inflated by the profiler)"
    )
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda row: -row[1][2])[:8]
    print(f"{'tottime s':>10}{'calls':>8}  function")
    for (filename, line, func), (_cc, calls, tottime, *_rest) in rows:
        where = f"{Path(filename).name}:{line} " if line else ""
        print(f"{tottime:>10.3f}{calls:>8}  {where}{func}")

    sealed_size = DEFAULT_CHUNK_SIZE + TAG_SIZE
    chunks = ws.size // DEFAULT_CHUNK_SIZE
    plaintext = os.urandom(DEFAULT_CHUNK_SIZE)
    aead = AESGCM(ws.key)
    sealed = aead.encrypt(bytes(12), plaintext, RAW_AD)

    def read_pieces() -> None:
        with ws.latest_cipher.open("rb") as f:
            while f.read(sealed_size):
                pass

    def decrypt_only() -> None:
        for _ in range(chunks):
            aead.decrypt(bytes(12), sealed, RAW_AD)

    def write_pieces() -> None:
        with ws.decrypted.open("wb") as f:
            for _ in range(chunks):
                f.write(plaintext)

    def loop_copies() -> None:
        # Per chunk, decrypt_stream's loop copies the whole chunk twice beyond the read:
        # ``carry + _read_exact(...)`` and ``pending[:sealed_size]``.
        pending = sealed + b"x"
        for _ in range(chunks):
            pending = pending[sealed_size:] + sealed
            _ = pending[:sealed_size]

    def whole() -> None:
        decrypt_file(ws.latest_cipher, ws.decrypted, ws.key)

    parts: dict[str, Callable[[], None]] = {
        "read the ciphertext file, 1 MiB + 16 pieces": read_pieces,
        "AES-GCM decrypt, in memory": decrypt_only,
        "write the plaintext file, 1 MiB pieces": write_pieces,
        "the loop's two whole-chunk copies, alone": loop_copies,
        "decrypt_stream, file -> file": whole,
    }
    figures = {label: best_of_3(ws, part) for label, part in parts.items()}
    # The parts alone reuse freed memory; decrypt_stream's mix of live 1 MiB objects makes glibc
    # give its heap back and fault it in again every chunk. Raising the trim and mmap thresholds
    # (process-wide, hence last) shows what that costs. MALLOC_TRIM_THRESHOLD_ does the same.
    if keep_freed_memory():
        figures["decrypt_stream, glibc keeping freed memory"] = best_of_3(ws, whole)
    print(f"\ndecrypt_stream taken apart, {ws.size // MiB:,} MiB, each part alone (best of 3)")
    print(f"{'seconds':>8}{'MB/s':>9}{'faults/MiB':>12}  part")
    for label, row in figures.items():
        print(f"{row['seconds']:>8.3f}{row['mb_s']:>9,.0f}{row['faults_per_mib']:>12.1f}  {label}")
    return figures


def best_of_3(ws: Workspace, part: Callable[[], None]) -> dict[str, float]:
    best, faults = float("inf"), 0
    for _ in range(3):
        ws.decrypted.unlink(missing_ok=True)
        gc.collect()
        before = minor_faults()
        start = time.perf_counter()
        part()
        seconds = time.perf_counter() - start
        if seconds < best:
            best, faults = seconds, minor_faults() - before
        if ws.decrypted.exists():
            ws.settle(ws.decrypted)
    return {
        "seconds": best,
        "mb_s": ws.size / best / 1e6,
        "faults_per_mib": faults / (ws.size / MiB),
    }


def keep_freed_memory() -> bool:
    """Ask glibc not to return freed memory to the system (True where that worked)."""
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(
            libc.mallopt(m_trim_threshold, 256 * MiB) and libc.mallopt(m_mmap_threshold, 32 * MiB)
        )
    except (OSError, AttributeError):
        return False


# --- report ---------------------------------------------------------------------------------


def report(
    plan: Plan,
    fsync: bool,
    ws: Workspace,
    ops: dict[str, Summary],
    rates: Samples,
    faults: Samples,
    memory: dict[str, dict],
) -> dict:
    """Print the tables and return the same figures for ``--json``."""
    median = {name: summary.median_mb_s for name, summary in ops.items()}
    ratios = {
        "decrypt_over_copy": median[DECRYPT] / median[COPY],
        "encrypt_over_copy": median[ENCRYPT] / median[COPY],
        "decrypt_over_raw_aesgcm": median[DECRYPT] / median[RAW_DECRYPT],
        "encrypt_over_raw_aesgcm": median[ENCRYPT] / median[RAW_ENCRYPT],
        "decrypt_to_bytes_over_copy": median[TO_BYTES] / median[COPY],
        "decrypt_to_bytes_over_raw_aesgcm": median[TO_BYTES] / median[RAW_DECRYPT],
    }
    per_round = [d / c for d, c in zip(rates[DECRYPT], rates[COPY], strict=True)]
    decrypt_met = ratios["decrypt_over_copy"] >= TARGET_DECRYPT_OVER_COPY
    streaming_peak = max(memory[name]["growth_mib"] for name in (ENCRYPT, DECRYPT))
    memory_met = streaming_peak < TARGET_PEAK_MIB

    writes = "fsync inside the clock" if fsync else "page cache, fsync outside the clock"
    print(
        f"\nVault streaming throughput, {plan.size // MiB:,} MiB file, 1 MiB pieces and chunks "
        f"({plan.rounds} interleaved rounds after a warm-up; writes: {writes})"
    )
    print(f"{'operation':<44}{'median MB/s':>12}{'min':>8}{'max':>8}{'faults/MiB':>12}")
    for name in ORDER:
        s = ops[name]
        print(
            f"{LABELS[name]:<44}{s.median_mb_s:>12,.0f}{s.min_mb_s:>8,.0f}{s.max_mb_s:>8,.0f}"
            f"{s.faults_per_mib:>12.1f}"
        )

    print(f"\n{'ratio of medians':<44}{'ratio':>12}  target")
    target = f">= {TARGET_DECRYPT_OVER_COPY:.2f}x  {'met' if decrypt_met else 'NOT MET'}"
    for key, label, note in [
        ("decrypt_over_copy", "decrypt_stream / copy", target),
        ("encrypt_over_copy", "encrypt_stream / copy", ""),
        ("decrypt_over_raw_aesgcm", "decrypt_stream / AES-GCM decrypt", ""),
        ("encrypt_over_raw_aesgcm", "encrypt_stream / AES-GCM encrypt", ""),
        ("decrypt_to_bytes_over_copy", "decrypt_to_bytes / copy", "(writes no file)"),
        ("decrypt_to_bytes_over_raw_aesgcm", "decrypt_to_bytes / AES-GCM decrypt", ""),
    ]:
        print(f"{label:<44}{ratios[key]:>11.2f}x  {note}")
    print(f"decrypt_stream / copy per round: {min(per_round):.2f}x to {max(per_round):.2f}x")

    source = memory[ENCRYPT]["source"]
    print(
        "\nPeak memory above the interpreter's baseline after imports "
        f"({source}, peak RSS, a fresh process per operation)"
    )
    print(f"{'operation':<44}{'growth MiB':>12}  target")
    for name in MEMORY_OPS:
        growth = memory[name]["growth_mib"]
        if name == TO_BYTES:
            note = "none: holds the whole plaintext by design"
        else:
            verdict = "met" if growth < TARGET_PEAK_MIB else "NOT MET"
            note = f"< {TARGET_PEAK_MIB:.0f} MiB  {verdict}"
        print(f"{LABELS[name]:<44}{growth:>12.1f}  {note}")

    if fsync:
        disk = "each is flushed to disk inside the clock, so the writes include the disk"
    else:
        disk = (
            "they land in the page cache and are flushed to disk outside\nthe clock, so the "
            "figures are CPU and memory cost, not the disk's speed"
        )
    print(
        "\nMeasured: MB/s = 10^6 bytes of plaintext per second; faults/MiB = minor page faults, "
        "i.e.\nfresh memory the process touched. Every read hits the page cache (each input "
        f"was written\nor read moments before). Writes go to new files in {ws.root.parent};\n"
        f"{disk}.\nAES-GCM rows: the cipher alone, in memory, no files."
    )
    print(
        f"targets: decrypt_stream >= {TARGET_DECRYPT_OVER_COPY:.2f}x copy: "
        f"{'met' if decrypt_met else 'NOT MET'}; streaming peak memory < "
        f"{TARGET_PEAK_MIB:.0f} MiB: {'met' if memory_met else 'NOT MET'}"
    )
    return {
        "targets": {
            "decrypt_over_copy_min": TARGET_DECRYPT_OVER_COPY,
            "decrypt_over_copy_met": decrypt_met,
            "streaming_peak_mib_max": TARGET_PEAK_MIB,
            "streaming_peak_met": memory_met,
        },
        "plan": {**asdict(plan), "fsync": fsync, "piece_bytes": PIECE},
        "operations": {name: asdict(summary) for name, summary in ops.items()},
        "mb_per_s_per_round": rates,
        "faults_per_mib_per_round": faults,
        "ratios": {**ratios, "decrypt_over_copy_per_round": per_round},
        "memory_mib": memory,
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "tmp_dir": str(ws.root.parent),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB, 5 rounds, under a minute")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument(
        "--fsync", action="store_true", help="count flushing each written file to disk"
    )
    parser.add_argument("--profile", action="store_true", help="then take decrypt_stream apart")
    parser.add_argument("--child", nargs=3, metavar=("OP", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, src, dst = args.child
        child(name, Path(src), Path(dst))
        return
    plan = QUICK if args.quick else FULL

    available = available_memory()
    if available is not None and available < 6 * plan.size:
        print(
            f"warning: {available // MiB:,} MiB available; the files may not stay in the page "
            "cache, which would make the figures noisy",
            file=sys.stderr,
        )
    root = Path(tempfile.mkdtemp(prefix="mm-bench-vault-"))
    try:
        ws = Workspace(root, plan.size, os.urandom(32), args.fsync)
        rates, faults = measure(ws, plan)
        ops = {name: summarize(rates[name], faults[name]) for name in ORDER}
        memory = measure_memory(ws)
        figures = report(plan, args.fsync, ws, ops, rates, faults, memory)
        if args.profile:
            figures["profile"] = profile_decrypt(ws)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
