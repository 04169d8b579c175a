"""Laser's stage-2 paper modules, one concept per file: semantic head, LTQA, adapter, label volume."""
