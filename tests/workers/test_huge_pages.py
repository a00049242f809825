"""A CPU host moves the weights it loads into memory advised for transparent huge pages, and
the model answers exactly as before."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from inference.runtime import formats
from tests.workers.conftest import output_of, queued, validated
from workers import services
from workers.pool import HOSTS
from workers.services import prediction_run, version_key, worker_device

WIDE = 1024 * 1024 * 4  # bytes of a 1024x1024 float32 weight: two huge pages


class Wide(nn.Module):
    """One weight over the 2 MiB threshold, one under it, and one used twice."""

    def __init__(self):
        super().__init__()
        self.wide = nn.Linear(1024, 1024)
        self.narrow = nn.Linear(1024, 8)
        self.tied = nn.Linear(8, 8, bias=False)
        self.again = nn.Linear(8, 8, bias=False)
        self.again.weight = self.tied.weight

    def forward(self, x):
        return self.again(self.tied(self.narrow(torch.relu(self.wide(x)))))


def exported(module: nn.Module) -> bytes:
    torch.manual_seed(0)
    program = torch.export.export(
        module.eval(),
        (torch.randn(2, 1024),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def advised_for_huge_pages(address: int) -> bool:
    """Whether the mapping holding ``address`` carries MADV_HUGEPAGE (``hg`` in smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return "hg" in line.split()[1:]
    return False


def test_only_large_unshared_weights_move_and_the_outputs_stay_the_same():
    torch.manual_seed(0)
    model = formats.load(exported(Wide()), format="pt2", device="cpu").module
    x = torch.randn(3, 1024)
    with torch.inference_mode():
        before = model(x)
    narrow = model.narrow.weight.data_ptr()

    assert formats.weights_in_huge_pages(model) == WIDE

    with torch.inference_mode():
        assert torch.equal(model(x), before)
    wide = model.wide.weight.data_ptr()
    assert wide % formats.HUGE_PAGE == 0
    assert advised_for_huge_pages(wide)
    assert model.narrow.weight.data_ptr() == narrow  # under 2 MiB: left where it was
    assert not advised_for_huge_pages(narrow)


def test_torchscript_keeps_its_weights_where_they_are():
    torch.manual_seed(0)
    script = torch.jit.script(nn.Linear(1024, 1024))
    where = script.weight.data_ptr()
    assert formats.weights_in_huge_pages(script) == 0
    assert script.weight.data_ptr() == where


@pytest.mark.django_db(transaction=True)  # the batcher runs in its own thread
@pytest.mark.usefixtures("fresh_hosts")
@pytest.mark.parametrize("enabled", [True, False])
def test_a_hosts_predictions_are_the_models_own_with_its_weights_in_huge_pages(
    tenant, monkeypatch, enabled
):
    monkeypatch.setattr(services, "HUGE_PAGE_WEIGHTS", enabled)
    torch.manual_seed(0)
    module = Wide().eval()
    data = exported(module)
    version = validated(tenant, "wide", data, fmt="pt2", example_input={"x": {"shape": [1, 1024]}})
    host = HOSTS.loaded(worker_device()).get(version_key(version))
    assert host.huge_page_bytes == (WIDE if enabled else 0)

    x = np.random.default_rng(0).standard_normal((2, 1024)).astype(np.float32)
    prediction = queued(version, x)
    assert prediction_run(prediction_id=prediction.public_id) == "succeeded"
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(output_of(prediction), expected, rtol=1e-5, atol=1e-6)
