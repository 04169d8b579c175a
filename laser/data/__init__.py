"""Scenes (3D-OVS / LLFF, Blender), rays and NDC, and the synthetic benchmark generator."""
