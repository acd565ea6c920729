"""Water-fat separation and fat fraction from multi-echo gradient echo (Dixon).

Signal model (canonical convention, fat at negative frequency)::

    s(t) = (W + F * c(t)) * exp((i 2 pi psi - R2*) t),
    c(t) = sum_p a_p exp(i 2 pi f_p t),   f_p = gamma * B0 * ppm_p * 1e-6

with complex water ``W`` and fat ``F`` amplitudes at t = 0, off-resonance
``psi`` (Hz), a common ``R2*`` (1/s) and the multi-peak fat spectrum ``c(t)``.
The default fat spectrum is the 6-peak model of Hamilton et al. as used by
Yu et al. and the ISMRM fat-water toolbox (peaks -3.80, -3.40, -2.60, -1.94,
-0.39, +0.60 ppm relative to water; relative amplitudes 0.087, 0.693, 0.128,
0.004, 0.039, 0.048):

- Yu H, Shimakawa A, McKenzie CA, Brodsky E, Brittain JH, Reeder SB.
  Multiecho water-fat separation and simultaneous R2* estimation with
  multifrequency fat spectrum modeling. Magn Reson Med 2008;60:1122-1134.
- Hamilton G, Yokoo T, Bydder M, et al. In vivo characterization of the
  liver fat 1H MR spectrum. NMR Biomed 2011;24:784-790.
- Ren J, Dimitrov I, Sherry AD, Malloy CR. Composition of adipose tissue and
  marrow fat in humans by 1H NMR at 7 Tesla. J Lipid Res 2008;49:2055-2062.

Separation follows variable projection (VARPRO): for every candidate field
``psi`` (and ``R2*``) the linear amplitudes are eliminated in closed form and
the residual is a function of the non-linear parameters only, evaluated for
all voxels at once as a matrix product (Hernando D, Haldar JP, Sutton BP,
Ma J, Kellman P, Liang ZP. Joint estimation of water/fat images and field
inhomogeneity map. Magn Reson Med 2008;59:571-580). Water-fat swaps are
avoided by choosing, among the local minima of the residual, the field map
that is spatially smooth:

1. quality-guided region growing over the residual minima of a
   block-averaged (coarse) image (Yu H, Reeder SB, Shimakawa A, Brittain JH,
   Pelc NJ. Field map estimation with a region growing scheme for iterative
   3-point water-fat decomposition. Magn Reson Med 2005;54:1032-1039);
2. one global branch per connected tissue component: the one with the
   lowest total residual where the echo times can tell water from fat;
   where they cannot (symmetric in-/out-of-phase echoes such as 3.45 / 4.60
   / 5.75 ms at 3 T, whose residual is periodic in the field with the fat
   shift) the branch whose mean field is closest to 0 Hz, the frequency the
   scanner sets on water. This assumes the mean field over each connected
   component (e.g. each leg) lies within half the fat shift of 0 Hz
   (+-217 Hz at 3 T);
3. penalised re-selection at full resolution with two smoothing passes (an
   iterated-conditional-modes relative of the graph cut of Hernando D,
   Kellman P, Haldar JP, Liang ZP. Robust water/fat separation in the
   presence of large field inhomogeneities using a graph cut algorithm. Magn
   Reson Med 2010;63:79-90), then parabolic refinement of field and R2*.

Fat fraction uses magnitude discrimination (Liu CY, McKenzie CA, Yu H,
Brittain JH, Reeder SB. Fat quantification with IDEAL gradient echo imaging:
correction of bias from T1 and noise. Magn Reson Med 2007;58:354-364) so that
noise does not bias fat fractions near 0 % and 100 %, or the common-phase
estimate ``Re(F / (W + F))``, linear in the data and so unbiased; the latter
is the fat fraction of the phase-constrained model (real water and fat
sharing one phase, always used for two echoes; Bydder M, Yokoo T, Yu H, et
al. Constraining the initial phase in water-fat separation. Magn Reson
Imaging 2011;29:216-221) and, for symmetric three-point echoes and a
single-peak fat model, of the Dixon method of Glover GH, Schneider E.
Three-point Dixon technique for true water/fat decomposition with B0
inhomogeneity correction. Magn Reson Med 1991;18:371-383 (the method of the
musclemap tool).

The code is split by job: the fat spectrum, separability and the simulator in
:mod:`bids_muscle.qmri.fat_spectrum`; the VARPRO kernels in
:mod:`bids_muscle.qmri.varpro`; the field-map regularisation (steps 1-3) in
:mod:`bids_muscle.qmri.fieldmap`; the complex separation in
:mod:`bids_muscle.qmri.dixon_complex`; fat fractions from scanner water/fat
images and from magnitude echoes in :mod:`bids_muscle.qmri.dixon_magnitude`.
This module is the public face of all of them.
"""

from __future__ import annotations

from bids_muscle.qmri.dixon_complex import separate_water_fat
from bids_muscle.qmri.dixon_magnitude import fat_fraction_from_magnitude_echoes, fat_fraction_from_water_fat
from bids_muscle.qmri.fat_spectrum import (
    FAT_PEAKS_PPM,
    FAT_PEAKS_RELATIVE_AMPLITUDE,
    GYROMAGNETIC_RATIO_HZ_PER_T,
    MIN_WATER_NSA,
    SINGLE_PEAK_FAT_PPM,
    check_separable,
    fat_signal_basis,
    fat_spectrum,
    simulate_megre,
    water_nsa,
)

__all__ = [
    "GYROMAGNETIC_RATIO_HZ_PER_T",
    "FAT_PEAKS_PPM",
    "FAT_PEAKS_RELATIVE_AMPLITUDE",
    "SINGLE_PEAK_FAT_PPM",
    "MIN_WATER_NSA",
    "fat_spectrum",
    "fat_signal_basis",
    "water_nsa",
    "check_separable",
    "simulate_megre",
    "separate_water_fat",
    "fat_fraction_from_water_fat",
    "fat_fraction_from_magnitude_echoes",
]
