"""bids_muscle: quantitative MRI of thigh and calf muscles as a BIDS App."""

__version__ = "0.1.0"
