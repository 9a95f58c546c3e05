"""Make torchvision importable next to a CPU-only torch.

The only torchvision built for torch 2.13.0 is a CUDA build. With the CPU torch its C
extension fails to load and ``import torchvision`` stops with ``operator torchvision::nms
does not exist`` (its fake-tensor registrations look the operators up); transformers,
diffusers, open_clip and pyiqa import torchvision and fail with it. When, and only when,
that happens, we declare the two operators the registrations need as schemas, so the
import goes on. No detection code in this project calls them; calling one raises
torch's own "no kernel" error rather than returning anything.
"""

from __future__ import annotations

import sys

import torch

_MISSING_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the registration alive
shim_active = False


def ensure_torchvision() -> None:
    global _library, shim_active
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        return  # not installed: nothing to repair, the importers that need it will say so
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _MISSING_OPS:
        _library.define(schema)
    import torchvision  # noqa: F401

    shim_active = True


ensure_torchvision()
