"""Training data engine: synthetic phoneme-aligned emotional speech with mouth and expression targets
(espeak-ng), augmentation, sharded storage, and readers for real corpora (CREMA-D, RAVDESS, MEAD)."""
