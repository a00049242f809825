import base64
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from marketplace.vault.keyring import (
    KekBackend,
    KeyRing,
    KeyUnavailableError,
    WrappedKey,
    add_primary_kek_to_file,
)
from marketplace.vault.stream import VaultIntegrityError

KEK_OLD = bytes(range(32))
KEK_NEW = bytes(range(100, 132))
DATA_KEY = bytes(range(200, 232))
ACME = "tenant:acme:key:tk_acme1"
GLOBEX = "tenant:globex:key:tk_globex1"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def ring() -> KeyRing:
    return KeyRing({"kek-new": KEK_NEW, "kek-old": KEK_OLD}, primary_id="kek-new")


def test_wrap_uses_the_primary_and_unwraps_to_the_same_key() -> None:
    keys = ring()
    wrapped = keys.wrap(DATA_KEY, context=ACME)
    assert wrapped.kek_id == "kek-new"
    assert DATA_KEY not in wrapped.blob
    assert keys.unwrap(wrapped.kek_id, wrapped.blob, context=ACME) == DATA_KEY


def test_wrapping_twice_gives_different_blobs() -> None:
    keys = ring()
    assert keys.wrap(DATA_KEY, context=ACME).blob != keys.wrap(DATA_KEY, context=ACME).blob


def test_wrapped_key_copied_to_another_context_does_not_unwrap() -> None:
    keys = ring()
    wrapped = keys.wrap(DATA_KEY, context=ACME)
    with pytest.raises(VaultIntegrityError, match="wrapped for another context"):
        keys.unwrap(wrapped.kek_id, wrapped.blob, context=GLOBEX)


def test_kek_id_and_context_boundary_is_unambiguous() -> None:
    # Plainly concatenated, "kek-a" + "b:ctx" and "kek-ab" + ":ctx" would be the same bytes.
    keys = KeyRing({"kek-a": KEK_OLD, "kek-ab": KEK_OLD}, primary_id="kek-a")
    wrapped = keys.wrap(DATA_KEY, context="b:ctx")
    with pytest.raises(VaultIntegrityError):
        keys.unwrap("kek-ab", wrapped.blob, context=":ctx")


@pytest.mark.parametrize("context", ["", None, b"tenant:acme"])
def test_empty_or_non_string_context_is_refused(context: object) -> None:
    keys = ring()
    wrapped = keys.wrap(DATA_KEY, context=ACME)
    with pytest.raises(ValueError, match="context must be a non-empty string"):
        keys.wrap(DATA_KEY, context=context)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context must be a non-empty string"):
        keys.unwrap(wrapped.kek_id, wrapped.blob, context=context)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context must be a non-empty string"):
        keys.generate_data_key(context=context)  # type: ignore[arg-type]


def test_keys_wrapped_under_an_old_kek_still_unwrap_and_rewrap_to_the_primary() -> None:
    old_only = KeyRing({"kek-old": KEK_OLD}, primary_id="kek-old")
    legacy = old_only.wrap(DATA_KEY, context=ACME)
    keys = ring()
    assert keys.unwrap(legacy.kek_id, legacy.blob, context=ACME) == DATA_KEY
    rewrapped = keys.rewrap(legacy.kek_id, legacy.blob, context=ACME)
    assert rewrapped.kek_id == "kek-new"
    assert keys.unwrap(rewrapped.kek_id, rewrapped.blob, context=ACME) == DATA_KEY


def test_rewrap_keeps_the_context() -> None:
    legacy = KeyRing({"kek-old": KEK_OLD}, primary_id="kek-old").wrap(DATA_KEY, context=ACME)
    keys = ring()
    rewrapped = keys.rewrap(legacy.kek_id, legacy.blob, context=ACME)
    with pytest.raises(VaultIntegrityError):
        keys.unwrap(rewrapped.kek_id, rewrapped.blob, context=GLOBEX)
    assert keys.unwrap(rewrapped.kek_id, rewrapped.blob, context=ACME) == DATA_KEY


def test_rewrap_under_the_wrong_context_is_rejected() -> None:
    legacy = KeyRing({"kek-old": KEK_OLD}, primary_id="kek-old").wrap(DATA_KEY, context=ACME)
    with pytest.raises(VaultIntegrityError, match="wrapped for another context"):
        ring().rewrap(legacy.kek_id, legacy.blob, context=GLOBEX)


def test_generate_data_key_returns_a_fresh_key_and_its_wrapping() -> None:
    keys = ring()
    data_key, wrapped = keys.generate_data_key(context=ACME)
    assert len(data_key) == 32
    assert keys.unwrap(wrapped.kek_id, wrapped.blob, context=ACME) == data_key
    assert keys.generate_data_key(context=ACME)[0] != data_key


def test_unknown_kek_id_raises_key_unavailable() -> None:
    wrapped = ring().wrap(DATA_KEY, context=ACME)
    retired = KeyRing({"kek-old": KEK_OLD}, primary_id="kek-old")
    with pytest.raises(KeyUnavailableError, match="'kek-new' is not in the key ring"):
        retired.unwrap(wrapped.kek_id, wrapped.blob, context=ACME)


def test_can_unwrap_names_exactly_the_keks_in_the_ring() -> None:
    keys = ring()
    assert keys.can_unwrap("kek-new") and keys.can_unwrap("kek-old")
    assert not keys.can_unwrap("kek-gone")


@pytest.mark.parametrize("position", [0, 12, 59])
def test_tampered_blob_is_rejected(position: int) -> None:
    keys = ring()
    blob = bytearray(keys.wrap(DATA_KEY, context=ACME).blob)
    blob[position] ^= 0x01
    with pytest.raises(VaultIntegrityError):
        keys.unwrap("kek-new", bytes(blob), context=ACME)


def test_blob_of_wrong_length_is_rejected() -> None:
    keys = ring()
    blob = keys.wrap(DATA_KEY, context=ACME).blob
    with pytest.raises(VaultIntegrityError, match="must be 60 bytes"):
        keys.unwrap("kek-new", blob[:-1], context=ACME)


def test_blob_relabelled_with_another_kek_id_is_rejected() -> None:
    # Even with the same KEK bytes under two ids, the id is authenticated.
    keys = KeyRing({"a": KEK_OLD, "b": KEK_OLD}, primary_id="a")
    wrapped = keys.wrap(DATA_KEY, context=ACME)
    with pytest.raises(VaultIntegrityError):
        keys.unwrap("b", wrapped.blob, context=ACME)


def test_wrap_rejects_data_keys_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ring().wrap(b"short", context=ACME)


def test_repr_does_not_reveal_key_material() -> None:
    text = repr(ring())
    assert "kek-new" in text
    assert b64(KEK_NEW) not in text and str(KEK_NEW) not in text


def test_key_ring_is_a_kek_backend() -> None:
    assert isinstance(ring(), KekBackend)


def test_a_backend_must_name_its_primary_kek() -> None:
    class NoPrimary(KekBackend):
        def wrap(self, data_key: bytes, *, context: str) -> WrappedKey:
            raise NotImplementedError

        def unwrap(self, kek_id: str, blob: bytes, *, context: str) -> bytes:
            raise NotImplementedError

        def can_unwrap(self, kek_id: str) -> bool:
            raise NotImplementedError

    with pytest.raises(TypeError, match="primary_id"):
        NoPrimary()  # type: ignore[abstract]


# --- environment value ---------------------------------------------------------------------


def test_env_value_first_entry_is_primary() -> None:
    keys = KeyRing.from_env_value(f"kek-2026-11:{b64(KEK_NEW)}, kek-2025-01:{b64(KEK_OLD)}")
    assert keys.primary_id == "kek-2026-11"
    assert keys.kek_ids == ("kek-2026-11", "kek-2025-01")
    legacy = KeyRing({"kek-2025-01": KEK_OLD}, primary_id="kek-2025-01").wrap(
        DATA_KEY, context=ACME
    )
    assert keys.unwrap(legacy.kek_id, legacy.blob, context=ACME) == DATA_KEY


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "key ring value is empty"),
        ("   ", "key ring value is empty"),
        ("kek-1", "entry 1 has no ':'"),
        (f"kek-1:{b64(KEK_NEW)},", "entry 2 has no ':'"),
        (f":{b64(KEK_NEW)}", "entry 1: invalid KEK id ''"),
        (f"bad id:{b64(KEK_NEW)}", "entry 1: invalid KEK id 'bad id'"),
        ("kek-1:not*base64", r"entry 1 \('kek-1'\): key is not valid base64"),
        (f"kek-1:{b64(b'short')}", r"entry 1 \('kek-1'\): key must decode to 32 bytes, got 5"),
        (f"kek-1:{b64(KEK_NEW)},kek-1:{b64(KEK_OLD)}", "entry 2: duplicate KEK id 'kek-1'"),
    ],
)
def test_malformed_env_values_raise_clear_value_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyRing.from_env_value(value)


def test_env_value_errors_never_echo_key_material() -> None:
    secret = b64(b"x" * 31)
    with pytest.raises(ValueError) as excinfo:
        KeyRing.from_env_value(f"kek-1:{secret}")
    assert secret not in str(excinfo.value)


# --- key file ------------------------------------------------------------------------------


def test_missing_key_file_is_created_private_and_reloads_the_same_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys" / "dev-keyring.json"
    with caplog.at_level(logging.WARNING, logger="marketplace.vault"):
        first = KeyRing.from_file(path, create_if_missing=True)
    assert "Created a development key file" in caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="marketplace.vault"):
        second = KeyRing.from_file(path, create_if_missing=True)
    assert caplog.text == ""
    assert second.kek_ids == first.kek_ids == (first.primary_id,)
    wrapped = first.wrap(DATA_KEY, context=ACME)
    assert second.unwrap(wrapped.kek_id, wrapped.blob, context=ACME) == DATA_KEY


def test_missing_key_file_is_an_error_unless_creation_is_requested(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KeyRing.from_file(tmp_path / "absent.json")


def test_losing_the_creation_race_loads_the_winners_key(tmp_path: Path) -> None:
    from marketplace.vault import keyring

    path = tmp_path / "keyring.json"
    winner = KeyRing.from_file(path, create_if_missing=True)
    assert keyring._create_key_file(path) is False
    assert KeyRing.from_file(path).primary_id == winner.primary_id
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_key_file_readable_by_others_logs_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keyring.json"
    KeyRing.from_file(path, create_if_missing=True)
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="marketplace.vault"):
        KeyRing.from_file(path)
    assert "accessible to other users" in caplog.text


def test_add_primary_kek_keeps_old_keys_unwrapping(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    before = KeyRing.from_file(path, create_if_missing=True)
    legacy = before.wrap(DATA_KEY, context=ACME)

    new_id = add_primary_kek_to_file(path, "kek-rotated")

    after = KeyRing.from_file(path)
    assert new_id == after.primary_id == "kek-rotated"
    assert set(after.kek_ids) == {before.primary_id, "kek-rotated"}
    assert after.unwrap(legacy.kek_id, legacy.blob, context=ACME) == DATA_KEY
    assert after.rewrap(legacy.kek_id, legacy.blob, context=ACME).kek_id == "kek-rotated"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_add_primary_kek_generates_an_id_and_rejects_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    KeyRing.from_file(path, create_if_missing=True)
    new_id = add_primary_kek_to_file(path)
    assert new_id.startswith("kek-")
    with pytest.raises(ValueError, match="already exists"):
        add_primary_kek_to_file(path, new_id)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"format": "other"}', "is not a modelmarket-keyring file"),
        ('{"format": "modelmarket-keyring", "version": 9}', "unsupported version 9"),
        ('{"format": "modelmarket-keyring", "version": 1, "keys": {}}', "non-empty 'keys'"),
    ],
)
def test_malformed_key_files_raise_clear_value_errors(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(ValueError, match=message):
        KeyRing.from_file(path)


def test_key_file_whose_primary_is_missing_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    doc = {
        "format": "modelmarket-keyring",
        "version": 1,
        "primary": "kek-gone",
        "keys": {"kek-1": b64(KEK_OLD)},
    }
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="primary KEK id 'kek-gone' is not among the keys"):
        KeyRing.from_file(path)
