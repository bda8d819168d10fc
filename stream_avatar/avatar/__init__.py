"""Avatars: enroll a portrait photo, store it with its renderer tensors, resolve a user's choice."""

from __future__ import annotations

from stream_avatar.avatar.enroll import EnrolledFace, EnrollmentError, EnrollmentWarning, enroll_image
from stream_avatar.avatar.store import (
    DEFAULT_AVATAR_IMAGE,
    Avatar,
    AvatarNotFoundError,
    AvatarStore,
    AvatarStoreError,
    validate_avatar_id,
)

__all__ = [
    "DEFAULT_AVATAR_IMAGE",
    "Avatar",
    "AvatarNotFoundError",
    "AvatarStore",
    "AvatarStoreError",
    "EnrolledFace",
    "EnrollmentError",
    "EnrollmentWarning",
    "enroll_image",
    "validate_avatar_id",
]
