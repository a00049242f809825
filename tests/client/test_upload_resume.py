"""An interrupted push resumes: after the connection drops, and after the process is killed,
the next push of the same file sends only the chunks the server lacks, and the version's
SHA-256 is the file's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from modelmarket import Client
from modelmarket.errors import ConnectionFailed

from marketplace.models import ModelVersion, UploadPart

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class DropsAfter(httpx.HTTPTransport):
    """A network that carries ``puts`` chunk uploads, then drops every connection."""

    def __init__(self, puts: int):
        super().__init__()
        self.left = puts

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            if self.left <= 0:
                raise httpx.RemoteProtocolError("Server disconnected", request=request)
            self.left -= 1
        return super().handle_request(request)


@pytest.fixture
def big_file(tmp_path, model_files) -> Path:
    path = tmp_path / "big.pt2"
    path.write_bytes(model_files["pt2"] * 40)  # a few hundred KiB: several 64 KiB chunks
    return path


def test_push_resumes_after_the_connection_drops(mm_env, small_chunks, big_file):
    size = big_file.stat().st_size
    flaky = Client(transport=DropsAfter(puts=3), max_retries=1)
    with pytest.raises(ConnectionFailed, match="Server disconnected"):
        flaky.push("acme/big", big_file, workers=1)
    state = list(Path(mm_env["MM_STATE_DIR"]).glob("uploads/*.json"))
    assert len(state) == 1  # named after the file's SHA-256
    upload_id = json.loads(state[0].read_text()).popitem()[1]["upload_id"]

    with Client() as client:
        result = client.push("acme/big", big_file)

    assert result.upload_id == upload_id
    assert result.resumed_bytes == 3 * small_chunks
    assert result.sent_bytes == size - 3 * small_chunks
    assert result.version.sha256 == hashlib.sha256(big_file.read_bytes()).hexdigest()
    assert ModelVersion.objects.get(public_id=result.version.raw["id"]).artifact.size == size
    assert not list(Path(mm_env["MM_STATE_DIR"]).glob("uploads/*.json"))  # forgotten when done


SLOW_PUSH = """
import sys, time, httpx
from modelmarket import Client

class Slow(httpx.HTTPTransport):
    def handle_request(self, request):
        if request.method == "PUT":
            time.sleep(0.2)
        return super().handle_request(request)

Client(transport=Slow()).push(sys.argv[1], sys.argv[2], workers=1)
"""


def test_push_resumes_after_the_process_is_killed(mm, mm_env, small_chunks, big_file):
    pusher = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", SLOW_PUSH, "acme/big", str(big_file)], env={**os.environ}
    )
    try:
        deadline = time.monotonic() + 30
        while UploadPart.objects.count() < 2:
            assert pusher.poll() is None, "the push ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk arrived"
            time.sleep(0.05)
    finally:
        pusher.kill()
        pusher.wait()
    stored = UploadPart.objects.count() * small_chunks

    resumed = mm("push", "acme/big", big_file, "--no-wait", "--json")

    assert resumed.code == 0, resumed.err
    upload = resumed.json()["upload"]
    assert upload["resumed_bytes"] >= stored
    assert upload["sent_bytes"] == big_file.stat().st_size - upload["resumed_bytes"]
    assert resumed.json()["version"]["sha256"] == hashlib.sha256(big_file.read_bytes()).hexdigest()


class LosesTheAnswerToComplete(httpx.HTTPTransport):
    """The server completes the upload, but its answer never arrives."""

    def __init__(self):
        super().__init__()
        self.lost = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/complete") and not self.lost:
            self.lost = True
            response.read()
            raise httpx.ReadError("Connection reset by peer", request=request)
        return response


def test_a_lost_answer_to_complete_is_recovered_not_repeated(mm_env, model_file):
    transport = LosesTheAnswerToComplete()

    with Client(transport=transport) as client:
        result = client.push("acme/clf", model_file)

    assert transport.lost
    assert result.version.number == 1 and result.version.status == "validating"
    assert ModelVersion.objects.filter(model__name="clf").count() == 1


def test_interrupting_the_wait_for_validation_says_the_upload_is_done(mm, model_file, monkeypatch):
    # It said "a push resumes where it stopped": pushing again made a second version.
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "wait_for_version", interrupted)

    run = mm("push", "acme/clf", model_file)

    assert run.code == 130
    assert "The upload is complete: acme/clf version 1 is validating" in run.err
    assert "mm wait acme/clf:1" in run.err
    assert ModelVersion.objects.count() == 1


class MeetsItsOwnCompletion(httpx.HTTPTransport):
    """The first complete meets an earlier attempt the server is still completing."""

    def __init__(self):
        super().__init__()
        self.completes = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/complete"):
            self.completes += 1
            if self.completes == 1:
                body = {"detail": "Another request is completing this upload.", "completing": True}
                return httpx.Response(409, json=body, headers={"Retry-After": "2"})
        return super().handle_request(request)


def test_a_complete_that_meets_its_own_earlier_attempt_waits_for_it(mm_env, model_file):
    # It took the 409 for a refusal and dropped the upload's state, leaving nothing to resume.
    transport = MeetsItsOwnCompletion()

    with Client(transport=transport) as client:
        result = client.push("acme/clf", model_file)

    assert transport.completes == 2
    assert result.version.number == 1
    assert ModelVersion.objects.filter(model__name="clf").count() == 1
