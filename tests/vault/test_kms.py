"""KmsBackend against moto: in-process for most tests, and once over HTTP through moto's
standalone server.  moto does not refuse disabled keys on Encrypt/Decrypt, so the error
mapping for states it cannot produce is checked with botocore's Stubber."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws
from moto.server import ThreadedMotoServer

from marketplace.vault.keyring import KekBackend, KeyUnavailableError
from marketplace.vault.kms import KmsBackend
from marketplace.vault.stream import VaultIntegrityError

REGION = "eu-west-1"
ACME = "tenant:acme:key:tk_acme1"
GLOBEX = "tenant:globex:key:tk_globex1"
DATA_KEY = bytes(range(200, 232))
UNKNOWN_KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000"


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials and no shared config, so no real account can be reached."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def kms() -> Iterator[Any]:
    """An in-process fake KMS; the client is for arranging keys."""
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


@pytest.fixture
def key_arn(kms: Any) -> str:
    return new_key(kms)


@pytest.fixture
def backend(key_arn: str) -> KmsBackend:
    return KmsBackend(key_arn, region_name=REGION)


def new_key(kms: Any) -> str:
    return kms.create_key(Description="modelmarket test KEK")["KeyMetadata"]["Arn"]


def test_kms_backend_is_a_kek_backend(backend: KmsBackend) -> None:
    assert isinstance(backend, KekBackend)


def test_generated_data_key_unwraps_to_the_same_key(backend: KmsBackend, key_arn: str) -> None:
    data_key, wrapped = backend.generate_data_key(context=ACME)
    assert len(data_key) == 32
    assert data_key not in wrapped.blob
    assert wrapped.kek_id == key_arn == backend.primary_id
    assert backend.unwrap(wrapped.kek_id, wrapped.blob, context=ACME) == data_key
    assert backend.generate_data_key(context=ACME)[0] != data_key


def test_wrap_encrypts_a_given_data_key(backend: KmsBackend, key_arn: str) -> None:
    wrapped = backend.wrap(DATA_KEY, context=ACME)
    assert wrapped.kek_id == key_arn
    assert backend.unwrap(wrapped.kek_id, wrapped.blob, context=ACME) == DATA_KEY


def test_wrapped_key_copied_to_another_context_does_not_unwrap(backend: KmsBackend) -> None:
    _, wrapped = backend.generate_data_key(context=ACME)
    with pytest.raises(VaultIntegrityError, match="wrapped for another context") as excinfo:
        backend.unwrap(wrapped.kek_id, wrapped.blob, context=GLOBEX)
    assert "tenant:globex:key:tk_globex1" in str(excinfo.value)


def test_tampered_blob_is_rejected(backend: KmsBackend) -> None:
    wrapped = backend.wrap(DATA_KEY, context=ACME)
    tampered = wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 0x01])
    with pytest.raises(VaultIntegrityError, match="tampered"):
        backend.unwrap(wrapped.kek_id, tampered, context=ACME)


def test_rewrap_moves_a_key_to_the_new_primary_and_keeps_its_context(
    kms: Any, backend: KmsBackend, key_arn: str
) -> None:
    data_key, wrapped = backend.generate_data_key(context=ACME)
    rotated = KmsBackend(new_key(kms), region_name=REGION)

    rewrapped = rotated.rewrap(wrapped.kek_id, wrapped.blob, context=ACME)

    assert rewrapped.kek_id == rotated.primary_id != key_arn
    assert rotated.unwrap(rewrapped.kek_id, rewrapped.blob, context=ACME) == data_key
    with pytest.raises(VaultIntegrityError):
        rotated.unwrap(rewrapped.kek_id, rewrapped.blob, context=GLOBEX)


def test_rewrap_under_the_wrong_context_is_rejected(kms: Any, backend: KmsBackend) -> None:
    _, wrapped = backend.generate_data_key(context=ACME)
    rotated = KmsBackend(new_key(kms), region_name=REGION)
    with pytest.raises(VaultIntegrityError, match="wrapped for another context"):
        rotated.rewrap(wrapped.kek_id, wrapped.blob, context=GLOBEX)


def test_unknown_key_is_unavailable(backend: KmsBackend) -> None:
    wrapped = backend.wrap(DATA_KEY, context=ACME)
    missing = KmsBackend(UNKNOWN_KEY_ARN, region_name=REGION)
    with pytest.raises(KeyUnavailableError, match="NotFoundException"):
        missing.generate_data_key(context=ACME)
    with pytest.raises(KeyUnavailableError, match="00000000-0000-0000-0000-000000000000"):
        backend.unwrap(UNKNOWN_KEY_ARN, wrapped.blob, context=ACME)


def test_region_comes_from_the_key_arn_when_not_given(
    monkeypatch: pytest.MonkeyPatch, key_arn: str
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    backend = KmsBackend(key_arn)
    assert backend.client.meta.region_name == REGION
    assert len(backend.generate_data_key(context=ACME)[0]) == 32


def test_primary_id_of_an_alias_is_the_key_arn(kms: Any, key_arn: str) -> None:
    kms.create_alias(AliasName="alias/modelmarket-kek", TargetKeyId=key_arn)
    backend = KmsBackend("alias/modelmarket-kek", region_name=REGION)
    assert backend.primary_id == key_arn
    assert backend.wrap(DATA_KEY, context=ACME).kek_id == key_arn


def test_primary_id_of_an_unknown_alias_is_unavailable(kms: Any) -> None:
    with pytest.raises(KeyUnavailableError, match="alias/absent"):
        _ = KmsBackend("alias/absent", region_name=REGION).primary_id


def test_can_unwrap_only_enabled_kms_keys(kms: Any, backend: KmsBackend, key_arn: str) -> None:
    disabled = new_key(kms)
    kms.disable_key(KeyId=disabled.rsplit("/", 1)[1])  # moto accepts only the bare id here
    assert backend.can_unwrap(key_arn)
    assert not backend.can_unwrap(disabled)
    assert not backend.can_unwrap(UNKNOWN_KEY_ARN)
    # A row still wrapped by the local KeyRing, before a move to KMS.
    assert not backend.can_unwrap("kek-20261128-1a2b3c4d")


@pytest.mark.parametrize("context", ["", None])
def test_empty_context_is_refused_before_calling_kms(context: Any) -> None:
    backend = KmsBackend(UNKNOWN_KEY_ARN, client=object())
    with pytest.raises(ValueError, match="context must be a non-empty string"):
        backend.generate_data_key(context=context)
    with pytest.raises(ValueError, match="context must be a non-empty string"):
        backend.unwrap(UNKNOWN_KEY_ARN, b"blob", context=context)


def test_wrap_rejects_data_keys_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        KmsBackend(UNKNOWN_KEY_ARN, client=object()).wrap(b"short", context=ACME)


# --- errors moto cannot produce ------------------------------------------------------------


def decrypt_failing_with(code: str) -> KmsBackend:
    client = boto3.client("kms", region_name=REGION)
    stubber = Stubber(client)
    stubber.add_client_error("decrypt", service_error_code=code, service_message=f"{code} here")
    stubber.activate()
    return KmsBackend(UNKNOWN_KEY_ARN, client=client)


@pytest.mark.parametrize(
    "code", ["NotFoundException", "DisabledException", "KMSInvalidStateException"]
)
def test_missing_disabled_or_deleted_key_is_unavailable(code: str) -> None:
    backend = decrypt_failing_with(code)
    with pytest.raises(KeyUnavailableError, match=code):
        backend.unwrap(UNKNOWN_KEY_ARN, b"blob", context=ACME)


@pytest.mark.parametrize("code", ["InvalidCiphertextException", "IncorrectKeyException"])
def test_ciphertext_kms_refuses_is_an_integrity_error(code: str) -> None:
    backend = decrypt_failing_with(code)
    with pytest.raises(VaultIntegrityError, match=code):
        backend.unwrap(UNKNOWN_KEY_ARN, b"blob", context=ACME)


@pytest.mark.parametrize("code", ["AccessDeniedException", "ThrottlingException"])
def test_other_kms_errors_propagate_unchanged(code: str) -> None:
    backend = decrypt_failing_with(code)
    with pytest.raises(ClientError, match=code):
        backend.unwrap(UNKNOWN_KEY_ARN, b"blob", context=ACME)


# --- over HTTP -----------------------------------------------------------------------------


@pytest.fixture
def moto_server_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_round_trip_over_http_against_a_kms_server(moto_server_url: str) -> None:
    admin = boto3.client("kms", region_name=REGION, endpoint_url=moto_server_url)
    key_arn = admin.create_key()["KeyMetadata"]["Arn"]
    backend = KmsBackend(key_arn, region_name=REGION, endpoint_url=moto_server_url)

    data_key, wrapped = backend.generate_data_key(context=ACME)

    assert wrapped.kek_id == key_arn
    assert backend.unwrap(wrapped.kek_id, wrapped.blob, context=ACME) == data_key
    with pytest.raises(VaultIntegrityError):
        backend.unwrap(wrapped.kek_id, wrapped.blob, context=GLOBEX)
