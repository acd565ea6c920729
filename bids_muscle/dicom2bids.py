"""The DICOM to BIDS converter under its former module name; it lives in :mod:`bids_muscle.dicom`."""

from bids_muscle.dicom import *  # noqa: F403
from bids_muscle.dicom import __all__  # noqa: F401
