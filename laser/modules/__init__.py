"""Stage-2 paper modules, one concept per file: semantic head, LTQA, adapter, label volume (Laser); relevancy maps
and Jensen-Shannon divergence, DINO correlation loss (3D-OVS)."""
