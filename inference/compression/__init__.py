"""Compression methods: quantization, pruning and knowledge distillation, plus the
measurements a compression report shows (size, parameters, latency, fidelity).

Plain torch, no Django: it runs inside the model host next to ``inference.runtime``. Every
method refuses up front, with :class:`NotApplicable` and the reason, when it cannot apply to a
module; none silently returns the module unchanged. Bad parameters raise ``ValueError``.
"""

from __future__ import annotations


class NotApplicable(ValueError):
    """The method cannot apply to this module; the message says why."""
