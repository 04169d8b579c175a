"""Radiance fields: TensoRF VM and multi-resolution hash grid, behind one interface (``base.RadianceField``)."""
