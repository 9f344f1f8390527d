"""Linear attenuation coefficients (per mm of material, about 50 keV) of the projection world.

A detector pixel's attenuation is the sum over materials of mu x chord length: dimensionless,
0 in air. The values are approximate; what matters for a radiograph is their ordering and
ratios (lung < fat < soft tissue < cancellous < cortical bone << metal).
"""

from __future__ import annotations

MU_AIR = 0.0
MU_LUNG = 0.006
MU_FAT = 0.018
MU_SOFT = 0.021
MU_CANCELLOUS = 0.035
MU_CORTEX = 0.085
MU_METAL = 0.45
