from __future__ import annotations

import hashlib
import io

import pytest


@pytest.fixture(scope="session")
def model_files() -> dict[str, bytes]:
    """Real model files in every format we meet: a torch.export archive, TorchScript, a
    safetensors state dict, and the pickles we refuse."""
    import torch
    from safetensors.torch import save as save_safetensors

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model.eval()
    example = torch.randn(1, 4)

    def saved(write) -> bytes:
        buffer = io.BytesIO()
        write(buffer)
        return buffer.getvalue()

    return {
        "pt2": saved(lambda b: torch.export.save(torch.export.export(model, (example,)), b)),
        "torchscript": saved(lambda b: torch.jit.save(torch.jit.trace(model, example), b)),
        "safetensors": save_safetensors(model.state_dict()),
        "pickle": saved(lambda b: torch.save(model, b)),
        "legacy_pickle": saved(
            lambda b: torch.save(model, b, _use_new_zipfile_serialization=False)
        ),
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
