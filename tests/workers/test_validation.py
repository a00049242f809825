"""Validation of uploaded versions in sandboxed model hosts, including the hostile-model
corpus: the worker survives, the version fails with a reason a person can act on, and other
models keep serving."""

from __future__ import annotations

import io
import pickle
import re
import zipfile

import pytest
import torch
from torch import nn

from accounts import services as accounts
from inference.runtime import codec
from marketplace import services
from marketplace.models import ModelVersion
from marketplace.vault.store import artifact_create
from workers.pool import HOSTS
from workers.services import version_key, version_validate

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _hosts(settings):
    settings.MODEL_LOAD_TIMEOUT = 20
    settings.MODEL_HOST_MEMORY_LIMIT = 1024**3
    settings.MODEL_HOST_ADDRESS_SPACE = 8 * 1024**3
    settings.MODEL_HOST_PRESTART = 0
    yield
    HOSTS.close()


def make_version(tenant, data: bytes, fmt: str, **fields) -> ModelVersion:
    model = tenant.models.first() or services.model_create(
        tenant=tenant, name="m", actor=accounts.SYSTEM
    )
    number = model.versions.count() + 1
    return ModelVersion.objects.create(
        model=model,
        number=number,
        format=fmt,
        status=ModelVersion.Status.VALIDATING,
        artifact=artifact_create(tenant=tenant, chunks=[data]),
        **fields,
    )


def saved(write) -> bytes:
    buffer = io.BytesIO()
    write(buffer)
    return buffer.getvalue()


def export(module: nn.Module, example: torch.Tensor, dynamic: bool = True) -> bytes:
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    program = torch.export.export(module.eval(), (example,), dynamic_shapes=shapes)
    return saved(lambda b: torch.export.save(program, b))


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class Forever(nn.Module):
    def forward(self, x):
        i = 0
        while i >= 0:
            i += 1
        return x


class Hog(nn.Module):
    def forward(self, x):
        big = torch.ones(768 * 1024 * 1024)  # 3 GiB, held while it keeps working
        total = x.sum()
        for _ in range(1000):
            total = total + big.sum()
        return x + total


class Boom(nn.Module):
    def forward(self, x):
        if bool(x.sum() > -1e30):
            raise RuntimeError("weights corrupted")
        return x


def scripted(module: nn.Module) -> bytes:
    return saved(lambda b: torch.jit.save(torch.jit.script(module), b))


def test_export_archive_becomes_ready_with_signature_and_latency(tenant):
    version = make_version(tenant, export(Classifier(), torch.randn(2, 4)), "pt2")

    version = version_validate(version_id=version.public_id)

    assert version.status == "ready", version.failure_reason
    assert version.signature == {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
    }
    assert version.parameter_count == 15
    assert version.latency_ms > 0


def test_validated_host_serves_predictions_that_match_the_model(tenant):
    torch.manual_seed(1)
    model = Classifier()
    version = version_validate(
        version_id=make_version(tenant, export(model, torch.randn(2, 4)), "pt2").public_id
    )
    host = HOSTS.loaded("cpu").get(version_key(version))
    x = torch.randn(5, 4)

    reply, body = host.request({"op": "predict"}, codec.encode({"x": x}), timeout=10)

    assert torch.allclose(codec.decode(body)["output"], model(x), atol=1e-6)
    assert reply["compute_ms"] > 0


def test_inputs_are_still_checked_after_the_host_has_seen_good_ones(tenant):
    """The host checks an input layout once and skips the check when it comes again: a
    different shape, dtype or name after many good requests is still refused with the
    message, and the good ones keep matching the model."""
    from workers.host import ModelFailure

    torch.manual_seed(2)
    model = Classifier()
    version = version_validate(
        version_id=make_version(tenant, export(model, torch.randn(2, 4)), "pt2").public_id
    )
    host = HOSTS.loaded("cpu").get(version_key(version))
    for _ in range(3):
        x = torch.randn(3, 4)
        _, body = host.request({"op": "predict"}, codec.encode({"x": x}), timeout=10)
        assert torch.allclose(codec.decode(body)["output"], model(x), atol=1e-6)

    refused = {
        "should have shape [-1, 4]": {"x": torch.randn(3, 5)},
        "should be FP32[-1, 4]; received FP64[3, 4]": {"x": torch.randn(3, 4).double()},
        "Unknown input(s) y": {"y": torch.randn(3, 4)},
    }
    for message, inputs in refused.items():
        with pytest.raises(ModelFailure, match=re.escape(message)) as failure:
            host.request({"op": "predict"}, codec.encode(inputs), timeout=10)
        assert failure.value.kind == "input"


def test_torchscript_needs_and_uses_the_upload_example(tenant):
    data = saved(
        lambda b: torch.jit.save(torch.jit.trace(Classifier().eval(), torch.randn(1, 4)), b)
    )
    without = version_validate(version_id=make_version(tenant, data, "torchscript").public_id)
    with_example = version_validate(
        version_id=make_version(
            tenant, data, "torchscript", example_input={"x": {"shape": [1, 4]}}
        ).public_id
    )

    assert without.status == "failed" and "example" in without.failure_reason
    assert with_example.status == "ready"
    assert with_example.signature["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]


def test_safetensors_with_a_builtin_architecture(tenant):
    from safetensors.torch import save

    from inference.runtime.architectures import build

    config = {"in_channels": 1, "image_size": 28, "classes": 10}
    weights = save(build("small_cnn", config).state_dict())
    ok = make_version(
        tenant, weights, "safetensors", architecture="small_cnn", architecture_config=config
    )
    wrong = make_version(
        tenant,
        weights,
        "safetensors",
        architecture="small_cnn",
        architecture_config={**config, "classes": 5},
    )

    assert version_validate(version_id=ok.public_id).signature["inputs"][0]["shape"] == [
        -1,
        1,
        28,
        28,
    ]
    failed = version_validate(version_id=wrong.public_id)
    assert failed.status == "failed" and "size mismatch for fc2.bias" in failed.failure_reason


def test_model_that_loops_forever_fails_on_the_deadline(tenant, settings):
    settings.MODEL_LOAD_TIMEOUT = 8
    version = make_version(
        tenant, scripted(Forever()), "torchscript", example_input={"x": {"shape": [1, 4]}}
    )
    version = version_validate(version_id=version.public_id)
    assert version.status == "failed"
    assert "did not finish" in version.failure_reason


def test_model_that_eats_memory_is_killed(tenant):
    version = make_version(
        tenant, scripted(Hog()), "torchscript", example_input={"x": {"shape": [1, 4]}}
    )
    version = version_validate(version_id=version.public_id)
    assert version.status == "failed"
    assert "memory" in version.failure_reason


class TmpHog(nn.Module):
    """Leaves 1.5 GiB in files in its private /tmp (a tmpfs: memory, which no process's RSS
    shows once unmapped), then keeps working."""

    def forward(self, x):
        total = x.sum()
        for i in range(48):
            path = "/tmp/hog" + str(i)
            held = torch.from_file(path, shared=True, size=8 * 1024 * 1024, dtype=torch.float32)
            total = total + held.fill_(1.0)[0]  # unmapped when dropped; the file stays
        small = torch.ones(1024)
        for _ in range(20_000_000):
            total = total + small[0]
        return x + total


def test_model_that_holds_memory_in_tmp_files_is_killed(tenant):
    """A model could keep any amount of memory in its /tmp (bubblewrap 0.8 cannot size it) and
    stay under the memory limit: a review helper held 5 GiB at 325 MiB of RSS. The worker now
    counts what the host's /tmp holds with its memory."""
    version = make_version(
        tenant, scripted(TmpHog()), "torchscript", example_input={"x": {"shape": [1, 4]}}
    )
    version = version_validate(version_id=version.public_id)
    assert version.status == "failed"
    assert "memory" in version.failure_reason


def test_model_that_raises_fails_with_its_message(tenant):
    version = make_version(
        tenant, scripted(Boom()), "torchscript", example_input={"x": {"shape": [1, 4]}}
    )
    version = version_validate(version_id=version.public_id)
    assert version.status == "failed" and "weights corrupted" in version.failure_reason


class ReservedOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"__metadata__": x * 2}


def test_a_model_that_names_an_output_metadata_fails_saying_to_rename_it(tenant):
    """Such a name would collide with the key safetensors keeps for itself on the wire."""
    version = make_version(
        tenant, scripted(ReservedOutput()), "torchscript", example_input={"x": {"shape": [1, 4]}}
    )
    version = version_validate(version_id=version.public_id)
    assert version.status == "failed"
    assert "'__metadata__', which is reserved; rename" in version.failure_reason


class Sparse(nn.Module):
    def forward(self, x):
        return x.to_sparse()


class Nested(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return (x, x), x


class Many(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {str(i): x for i in range(2000)}


class TakesBf16(nn.Module):
    def forward(self, x):
        return x.float() * 2


@pytest.mark.parametrize(
    "module, example, reason",
    [
        # Ready before, and then every prediction failed.
        (Sparse(), {"x": {"shape": [1, 4]}}, "output 'output' is a torch.sparse_coo tensor"),
        (
            TakesBf16(),
            {"x": {"shape": [1, 4], "datatype": "BF16"}},
            "The input 'x' is BF16, which requests cannot carry",
        ),
        # It failed saying "'tuple' object has no attribute 'dtype'".
        (Nested(), {"x": {"shape": [1, 4]}}, "output 'output_0' is a tuple, not a tensor"),
        # It failed saying "the model host sent a reply header of 2419035 bytes".
        (Many(), {"x": {"shape": [1, 4]}}, "The model returns 2000 tensors; at most 1024"),
    ],
)
def test_a_model_that_could_never_be_served_fails_validation_saying_why(
    tenant, module, example, reason
):
    version = make_version(tenant, scripted(module), "torchscript", example_input=example)

    version = version_validate(version_id=version.public_id)

    assert version.status == "failed"
    assert reason in version.failure_reason


class _Shell:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/modelmarket-pwned",))


def _with_entry(archive: bytes, suffix: str, payload: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = payload if info.filename.endswith(suffix) else src.read(info.filename)
            dst.writestr(info, data)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_pickled_shell_command_in_an_archive_is_refused_at_load(tenant, fmt):
    evil = pickle.dumps(_Shell(), protocol=2)
    if fmt == "torchscript":
        data = _with_entry(scripted(Classifier()), "data.pkl", evil)
    else:
        data = _with_entry(export(Classifier(), torch.randn(2, 4)), "sample_inputs/model.pt", evil)
    version = version_validate(
        version_id=make_version(tenant, data, fmt, example_input={"x": {"shape": [1, 4]}}).public_id
    )

    # The loaders refuse the pickle; had one run it, the host could not have started a shell
    # (fork is blocked: tests/workers/test_sandbox.py).
    assert version.status == "failed"
    assert version.failure_reason.startswith(f"Could not load the {fmt} file")


def test_other_models_keep_serving_after_a_hostile_one(tenant, settings):
    good = version_validate(
        version_id=make_version(tenant, export(Classifier(), torch.randn(2, 4)), "pt2").public_id
    )
    settings.MODEL_LOAD_TIMEOUT = 6
    bad = make_version(
        tenant, scripted(Forever()), "torchscript", example_input={"x": {"shape": [1, 4]}}
    )
    assert version_validate(version_id=bad.public_id).status == "failed"

    host = HOSTS.loaded("cpu").get(version_key(good))
    reply, _ = host.request({"op": "predict"}, codec.encode({"x": torch.randn(1, 4)}), timeout=10)
    assert reply["ok"]


def test_validation_is_idempotent(tenant):
    version = make_version(tenant, export(Classifier(), torch.randn(2, 4)), "pt2")
    first = version_validate(version_id=version.public_id)
    again = version_validate(version_id=version.public_id)  # a redelivered task
    assert first.status == again.status == "ready"
    assert first.validated_at == again.validated_at


def test_a_version_another_worker_is_validating_is_left_to_it_until_its_claim_runs_out(tenant):
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import AuditEvent
    from marketplace.services import version_claim_validation

    version = make_version(tenant, export(Classifier(), torch.randn(2, 4)), "pt2")
    assert version_claim_validation(version=version, seconds=300)  # another worker took it
    decrypts = AuditEvent.objects.filter(action="artifact.decrypt")

    second = version_validate(version_id=version.public_id)  # a second delivery of the task

    assert second.status == "validating"
    assert not decrypts.exists()  # nothing decrypted, no host loaded
    assert HOSTS.loaded("cpu").keys() == []

    # That worker died: once its claim has run out, a redelivery validates the version.
    version.validation_claimed_until = timezone.now() - timedelta(seconds=1)
    version.save(update_fields=["validation_claimed_until"])

    third = version_validate(version_id=version.public_id)

    assert third.status == "ready"
    assert third.validation_claimed_until is None
    assert decrypts.count() == 1


def test_a_host_that_crashes_mid_request_fails_clearly_and_is_replaced(tenant):
    import os
    import signal

    from workers.host import HostFailure

    version = version_validate(
        version_id=make_version(tenant, export(Classifier(), torch.randn(2, 4)), "pt2").public_id
    )
    host = HOSTS.loaded("cpu").get(version_key(version))
    for child in __import__("psutil").Process(host.proc.pid).children(recursive=True):
        os.kill(child.pid, signal.SIGSEGV)  # the interpreter inside the sandbox dies

    with pytest.raises(HostFailure) as failure:
        host.request({"op": "predict"}, codec.encode({"x": torch.randn(1, 4)}), timeout=10)

    assert failure.value.kind == "crash"
    assert HOSTS.loaded("cpu").get(version_key(version)) is None  # dropped: next load is fresh


def test_hosts_are_recycled_after_many_requests(tenant, settings):
    settings.MODEL_HOST_MAX_REQUESTS = 3
    version = version_validate(
        version_id=make_version(tenant, export(Classifier(), torch.randn(2, 4)), "pt2").public_id
    )
    host = HOSTS.loaded("cpu").get(version_key(version))  # load + validate: 2 requests
    host.request({"op": "predict"}, codec.encode({"x": torch.randn(1, 4)}), timeout=10)

    assert HOSTS.loaded("cpu").get(version_key(version)) is None
    assert not host.alive


def test_health_check_kills_a_host_that_stopped_answering(tenant):
    import os
    import signal

    import psutil

    version = version_validate(
        version_id=make_version(tenant, export(Classifier(), torch.randn(2, 4)), "pt2").public_id
    )
    host = HOSTS.loaded("cpu").get(version_key(version))
    assert host.ping()
    for child in psutil.Process(host.proc.pid).children(recursive=True):
        os.kill(child.pid, signal.SIGSTOP)  # hung, but not dead

    assert HOSTS.ping_all() == 1
    assert not host.alive
    assert HOSTS.loaded("cpu").get(version_key(version)) is None


def test_health_check_kills_an_idle_host_over_its_memory_limit(tenant):
    """A request's wait watches the memory; between requests only the health check does."""
    version = version_validate(
        version_id=make_version(tenant, export(Classifier(), torch.randn(2, 4)), "pt2").public_id
    )
    host = HOSTS.loaded("cpu").get(version_key(version))
    assert host.ping()
    host.rss_limit = host.rss() // 2  # as if it had grown to twice its limit since

    assert not host.ping()
    assert not host.alive
    assert HOSTS.loaded("cpu").get(version_key(version)) is None


def _burn(a: torch.Tensor, n: int) -> torch.Tensor:
    y = a
    for _ in range(n):
        y = torch.mm(y, a) * 1e-3
    return y


class LeavesWork(nn.Module):
    """Starts work on torch's inter-op pool for a large input and answers without waiting."""

    def forward(self, x):
        futures: list[torch.jit.Future[torch.Tensor]] = []
        if bool(x[0, 0] > 1000):
            futures.append(torch.jit.fork(_burn, torch.rand(256, 256), 1_000_000))
        return x + float(len(futures)) * 0


def test_health_check_kills_a_host_that_keeps_working_after_its_reply(tenant):
    """Work a model leaves running after it answered is outside every request's deadline and
    memory watch (and unbilled): a review helper kept both cores busy with it, with nothing
    in flight. A host that works between two checks with no request is killed; an idle one
    (or one that served requests meanwhile) is not."""
    import time

    busy = version_validate(
        version_id=make_version(
            tenant, scripted(LeavesWork()), "torchscript", example_input={"x": {"shape": [1, 4]}}
        ).public_id
    )
    quiet = version_validate(
        version_id=make_version(tenant, export(Classifier(), torch.randn(2, 4)), "pt2").public_id
    )
    host = HOSTS.loaded("cpu").get(version_key(busy))
    assert HOSTS.ping_all() == 0  # where each host's count starts

    reply, _ = host.request(
        {"op": "predict"}, codec.encode({"x": torch.full((1, 4), 5000.0)}), timeout=10
    )
    assert reply["compute_ms"] < 1000  # it answered at once, its work still running
    assert HOSTS.ping_all() == 0  # it served a request since the last check
    started, deadline = host.cpu_seconds(), time.monotonic() + 60
    while host.cpu_seconds() - started < 1.5:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    assert HOSTS.ping_all() == 1
    assert not host.alive
    assert HOSTS.loaded("cpu").get(version_key(busy)) is None
    assert HOSTS.loaded("cpu").get(version_key(quiet)).alive


def test_loaded_hosts_count_their_own_memory_so_small_models_cannot_pile_up(tenant, settings):
    HOSTS.close()  # the cache is sized when first used: start from an empty one
    settings.MODEL_CACHE_BYTES = 1024**3
    settings.MODEL_HOST_OVERHEAD_BYTES = 400 * 1024**2  # two hosts fit, three do not
    versions = [
        version_validate(
            version_id=make_version(
                tenant, export(Classifier(), torch.randn(2, 4)), "pt2"
            ).public_id
        )
        for _ in range(3)
    ]

    loaded = HOSTS.loaded("cpu")

    assert loaded.keys() == [version_key(v) for v in versions[1:]]
    assert loaded.used() <= settings.MODEL_CACHE_BYTES


def test_a_worker_that_cannot_start_a_host_retries_then_fails_the_version_saying_why(
    tenant, monkeypatch
):
    """A host that dies while starting (on the GPU machine: a uid missing from the sandbox's
    /etc/passwd) is the platform's failure: the task retries, then the version fails with a
    reason that says so. It never stays ``validating``."""
    from workers.host import HostFailure
    from workers.tasks import validate_version

    starts = []

    class Broken:
        def take(self):
            starts.append(1)
            raise HostFailure("crash", "the model host exited with status 1: KeyError: 65534")

    monkeypatch.setattr(HOSTS, "idle", lambda device: Broken())
    version = make_version(tenant, export(Classifier(), torch.randn(2, 4)), "pt2")

    validate_version.apply(args=[version.public_id])  # eager: each retry runs at once

    version.refresh_from_db()
    assert len(starts) == 4  # the first try and three retries
    assert version.status == ModelVersion.Status.FAILED
    assert "could not start a model host" in version.failure_reason
    assert "KeyError: 65534" in version.failure_reason


class Chatty(nn.Module):
    """Prints two lines of 1 MiB on every forward pass, then a short one."""

    def forward(self, x):
        line = "x"
        for _ in range(20):
            line = line + line
        print(line)
        print(line)
        print("done")
        return x


def printing(tenant, module: nn.Module, line: str, times: int):
    """``module`` validated (as TorchScript), once its host's output holds ``line`` ``times``
    times; the version and the host."""
    import time

    version = version_validate(
        version_id=make_version(
            tenant, scripted(module), "torchscript", example_input={"x": {"shape": [1, 4]}}
        ).public_id
    )
    host = HOSTS.loaded("cpu").get(version_key(version))
    deadline = time.monotonic() + 10
    while host.stderr_tail(64).splitlines().count(line) < times:
        assert time.monotonic() < deadline, host.stderr_tail(64)[-500:]
        time.sleep(0.05)
    return version, host


def test_what_a_model_prints_is_kept_bounded_in_the_worker(tenant):
    _version, host = printing(tenant, Chatty(), "done", 6)  # validation runs it six times

    kept = host.stderr_tail(64).splitlines()
    assert sum(len(line) for line in kept) < 100_000  # not 10 MiB and more
    assert set(kept) == {"x" * 2048 + " [cut]", "done"}


class Says(nn.Module):
    def forward(self, x):
        print("said")
        return x


def test_what_a_model_prints_reaches_the_worker_as_it_is_printed_under_its_prediction(
    tenant, caplog
):
    # The host's C stdio buffered it (4 KiB): the lines arrived long after, under whichever
    # request was running then, or none ("-": the fast path has no request of its own).
    import logging
    import time

    import numpy as np

    from tests.workers.conftest import queued
    from workers.services import prediction_run

    version, _host = printing(tenant, Says(), "said", 6)

    def said_running(prediction) -> list[tuple[str, str]]:
        caplog.clear()  # validation's six lines, or the run before
        with caplog.at_level(logging.INFO, logger="workers.host.output"):
            prediction_run(prediction_id=prediction.public_id)
            deadline = time.monotonic() + 10
            while not [r for r in caplog.records if r.name == "workers.host.output"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        said = [r for r in caplog.records if r.name == "workers.host.output"]
        return [(r.getMessage(), r.request_id) for r in said]

    prediction = queued(version, np.ones((1, 4), np.float32))
    assert said_running(prediction) == [("said", prediction.public_id)]
    # Made by a request with an id (X-Request-ID), the worker's lines carry that: the fast
    # path gave them the prediction's id alone, which no web log line named.
    asked = queued(version, np.ones((1, 4), np.float32))
    type(asked).objects.filter(pk=asked.pk).update(request_id="rid-says-1")
    assert said_running(asked) == [("said", "rid-says-1")]
