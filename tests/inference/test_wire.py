"""The lean encoder writes exactly what the safetensors loader reads back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference import tensors
from inference.runtime import codec


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.bfloat16,
    ],
)
def test_torch_tensors_round_trip(dtype):
    original = {
        "x": (torch.randn(3, 5) * 10).to(dtype),
        "empty": torch.zeros(0, 2, dtype=dtype),
        "scalar": torch.tensor(7).to(dtype),
        "t": torch.randn(4, 3).t().to(dtype),
    }
    decoded = codec.decode(codec.encode(original))
    assert decoded.keys() == original.keys()
    for name, tensor in original.items():
        assert decoded[name].dtype == dtype and torch.equal(decoded[name], tensor)


def test_tensors_numpy_cannot_view_are_encoded_too():
    """Outputs are viewed through numpy where they can be; a tensor that needs grad (a
    model's forward outside inference_mode) or a bfloat16 one takes the longer way."""
    original = {"grad": torch.randn(2, 3, requires_grad=True), "bf16": torch.randn(2).bfloat16()}
    decoded = codec.decode(codec.encode(original))
    assert torch.equal(decoded["grad"], original["grad"].detach())
    assert torch.equal(decoded["bf16"], original["bf16"])


def test_numpy_arrays_round_trip_including_views():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    original = {"a": base[:, ::2], "b": np.array([True, False]), "c": base.astype(np.int64)}
    decoded = tensors.decode(tensors.encode(original))
    for name, array in original.items():
        assert np.array_equal(decoded[name], array) and decoded[name].dtype == array.dtype


def test_big_endian_arrays_fall_back_correctly():
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    assert np.array_equal(tensors.decode(tensors.encode({"x": array}))["x"], array)


@pytest.mark.parametrize(
    ("encode", "decode", "make"),
    [
        (codec.encode, codec.decode, lambda values: torch.tensor(values)),
        (tensors.encode, tensors.decode, lambda values: np.array(values, dtype=np.float32)),
    ],
    ids=["torch", "numpy"],
)
def test_a_header_seen_before_is_read_without_safetensors_to_the_same_tensors(
    encode, decode, make, monkeypatch
):
    """The second payload of a header (the next prediction of the same shape) is read from
    the remembered layout: same names in the order they were written, values, shapes."""
    from inference.runtime import codec as codec_module

    first = {"logits": make([[1.0, 2.0, 3.0]]), "a": make([7.0]), "empty": make([[]])}
    second = {"logits": make([[4.0, 5.0, 6.0]]), "a": make([8.0]), "empty": make([[]])}
    decode(encode(first))

    def refused(_data):
        raise AssertionError("safetensors read a header that was seen before")

    monkeypatch.setattr(codec_module, "_load", refused)
    monkeypatch.setattr(tensors, "_load", refused)
    decoded = decode(encode(second))

    assert list(decoded) == ["logits", "a", "empty"]  # safetensors' own order is random
    for name, value in second.items():
        assert decoded[name].shape == value.shape and (decoded[name] == value).all()


def test_the_same_header_with_other_bytes_after_it_is_checked_again():
    """A layout is trusted only for payloads of the length it was learnt from: a truncated
    body with a known header is refused by safetensors, not read past its end."""
    body = tensors.encode({"x": np.ones((2, 3), dtype=np.float32)})
    tensors.decode(body)
    codec.decode(body)

    for other in (body[:-4], body + b"\0" * 8):  # cut short, or with bytes after its tensors
        with pytest.raises(Exception, match="(?i)invalid|out of bounds|incomplete|metadata"):
            tensors.decode(other)
        with pytest.raises(Exception, match="(?i)invalid|out of bounds|incomplete|metadata"):
            codec.decode(other)


def test_zero_dimensional_arrays_keep_their_shape():
    decoded = tensors.decode(tensors.encode({"s": np.array(3.5, dtype=np.float32)}))
    assert decoded["s"].shape == () and decoded["s"] == 3.5


def test_decoded_arrays_are_read_only_the_first_time_too():
    """Later decodes of a header are views over the payload; the first is as read-only, so
    code that writes into them fails at once rather than on warm requests only."""
    body = tensors.encode({"fresh": np.ones(2, dtype=np.float32)})
    for _ in range(2):
        with pytest.raises(ValueError, match="read-only"):
            tensors.decode(body)["fresh"][0] = 2


def test_a_header_too_long_to_be_a_models_output_is_refused_unread(monkeypatch):
    """A hostile model host's reply of a huge safetensors header is refused before safetensors
    builds it (it takes headers of up to 100 MB, at ~35 times their size in memory)."""

    def unread(_data):
        raise AssertionError("safetensors read it")

    monkeypatch.setattr(tensors, "_load", unread)
    header = b"{" + b" " * (tensors.MAX_HEADER_BYTES + 7) + b"}"
    with pytest.raises(ValueError, match="header over"):
        tensors.decode(len(header).to_bytes(8, "little") + header)


def test_the_layout_caches_stay_bounded(monkeypatch):
    from inference.runtime import wire

    monkeypatch.setattr(wire, "CACHE_LIMIT", 4)
    monkeypatch.setattr(wire, "_headers", {})  # as other tests left it: over 4 already
    layouts = wire.Layouts(viewable={"F32"}, limit=4)
    for rows in range(1, 10):
        body = tensors.encode({"x": np.zeros((rows, 2), dtype=np.float32)})
        layouts.learn(body)
        assert layouts.known(body)[0][2] == (rows, 2)
        assert len(layouts._slots) <= 4 and len(wire._headers) <= 4


def test_long_headers_are_read_but_not_kept():
    """safetensors reads headers of up to 100 MB; the caches keep only short ones, so a
    hostile model host cannot fill the worker's memory with them."""
    from inference.runtime import wire

    body = tensors.encode({"x" * (wire.CACHE_HEADER_BYTES + 1): np.ones(3, dtype=np.float32)})

    for _ in range(2):
        [(name, array)] = tensors.decode(body).items()
        assert name == "x" * (wire.CACHE_HEADER_BYTES + 1) and array.tolist() == [1.0] * 3
    assert tensors._layouts.known(body) is None
    assert all(len(head) <= wire.CACHE_HEADER_BYTES for head in wire._headers.values())
