"""laser: language-guided 3D segmentation in neural radiance fields (Laser, LERF, 3D-OVS)."""

from laser import compat as _compat  # noqa: F401  (must run before anything imports torchvision)
from laser import allocator as _allocator

_allocator.keep_freed_memory()

__version__ = "0.1.0"
