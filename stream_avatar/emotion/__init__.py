"""Emotion: what the face expresses, kept apart from who the face is.

``facs``: the 8 MEAD emotions as FACS action units → rig coefficients, and the operator's expression
layer. The learned stage (embedder, bank, discriminator) lives beside it.
"""
