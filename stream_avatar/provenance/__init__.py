"""Provenance of generated video (issue 12, "Responsible use"): what marks and records say who made it."""
