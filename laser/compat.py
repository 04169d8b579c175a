"""Make ``import torchvision`` work on a CPU-only torch build.

The torchvision wheel that matches torch 2.13.0 on PyPI is built against CUDA. On a CPU torch its compiled
extension cannot load, and ``torchvision/_meta_registrations.py`` then fails at import with
"operator torchvision::nms does not exist". open_clip and timm import torchvision, so the CLIP side of this
project would not import at all. Declaring the two operator schemas that the meta registrations look up is
enough: nothing in this project calls them. On a CUDA build, or when the extension loads, this does nothing.

Import this module before anything that imports torchvision (``laser/__init__.py`` does).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library.Library alive: dropping it would unregister the schemas


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to fix
    folder = spec.submodule_search_locations[0]
    for name in os.listdir(folder):
        if name.startswith("_C") and name.endswith((".so", ".pyd")):
            try:
                torch.ops.load_library(os.path.join(folder, name))
                return True
            except OSError:
                return False
    return False


def ensure_torchvision_importable() -> None:
    global _library
    if _library is not None or "torchvision" in sys.modules or torch.version.cuda is not None:
        return
    if _extension_loads():
        return
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)


ensure_torchvision_importable()
