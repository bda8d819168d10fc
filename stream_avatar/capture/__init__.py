"""Capture: face video → rig coefficients (the inverse fitter), for reference clips and corpora."""
