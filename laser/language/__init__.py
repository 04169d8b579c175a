"""Language side of the project: CLIP through open_clip, dense CLIP features (SCLIP / MaskCLIP), text prompts and
their augmentation, the teachers that supervise a language field, and an on-disk feature cache.

Every module here that imports open_clip imports ``laser`` first (``laser.compat`` makes torchvision importable on a
CPU-only torch build).
"""
