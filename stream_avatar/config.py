"""Typed configuration, built once at the edge and passed down.

Precedence, highest first: command-line flags > ``STREAM_AVATAR_*`` environment variables > a TOML
file (``--config FILE`` or ``STREAM_AVATAR_CONFIG``) > the defaults below. This is the only module
that reads ``os.environ``; components receive the frozen dataclasses (or plain values from them).

TOML layout (every key optional)::

    [engine]
    fps = 25
    driver = "learned"       # "learned" (models/motion) or "dsp"
    max_buffer_s = 2.0
    device = "auto"          # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    emotion = "auto"         # NAME[:INTENSITY] terms joined by "+"; auto = inferred from the voice
                             # ("auto" is the default; "happy:0.7"; "auto+happy:0.3"; "auto:0.5")
    # emotion_prior_neutral = 0.5  # the share of neutral in the prior the voice's emotion is read with
                             # (unset: the emotion model's own, 0.5; 0.125: no preference)

    [avatar]
    spec = "portrait.jpg"    # an image path or an enrolled avatar id; empty = the default avatar
    size = 512
    store_dir = "~/avatars"
    allow_unconsented_avatars = false  # true: also use avatars stored without a consent record

    [disclosure]
    enabled = true           # the visible "AI-generated" badge on every output frame (false is logged)
    text = "AI-generated"
    position = "bottom-right"  # top-left, top-right, bottom-left, bottom-right
    opacity = 0.85           # 0.2..1

    [audit]
    path = ""                # JSON-lines audit log; empty = audit.jsonl in the avatar store's data dir

    [watermark]
    enabled = true           # the invisible mark (instance, avatar, time) in every output frame
    instance_id = ""         # this server's name in the mark; empty = the host name

    [janus]                  # webinar fan-out: POST /janus/STREAM publishes a stream into a VideoRoom
    url = ""                 # Janus's HTTP transport, e.g. "http://127.0.0.1:8088/janus"; empty = off
    room = 1234              # the default room (a request may name another with ?room=N)
    create_room = false      # create a missing room (else: an error)
    pin = ""                 # the room's pin / secret, the plugin's admin_key, Janus's api_secret
    secret = ""              # (all optional; never logged)
    admin_key = ""
    api_secret = ""

    [server]
    host = "127.0.0.1"
    port = 8080
    latency_budget_ms = 80   # frames wait at most this long for their tick
    max_sessions = 4         # hard cap; below it, admission control refuses what the load cannot carry
    max_viewers = 16         # watch-only viewers of running streams (each costs an encode)
    cpu_fraction = 0.6       # share of this process's cores that sessions may use in all (admission)
    audio_jitter_prefetch = 0  # 0: mic packets to the decoder on arrival; N: aiortc's buffer of N x 20 ms
    cors_origins = []        # pages of these origins may call WHIP/WHEP ("https://app.example.com"); []: none

Environment variables use the key name: ``STREAM_AVATAR_FPS``, ``STREAM_AVATAR_DRIVER``,
``STREAM_AVATAR_MAX_BUFFER_S``, ``STREAM_AVATAR_DEVICE``, ``STREAM_AVATAR_EMOTION``,
``STREAM_AVATAR_AVATAR`` (the spec), ``STREAM_AVATAR_SIZE``, ``STREAM_AVATAR_STORE_DIR``,
``STREAM_AVATAR_HOST``, ``STREAM_AVATAR_PORT``,
``STREAM_AVATAR_LATENCY_BUDGET_MS``, ``STREAM_AVATAR_MAX_SESSIONS``, ``STREAM_AVATAR_CPU_FRACTION``,
``STREAM_AVATAR_AUDIO_JITTER_PREFETCH``, ``STREAM_AVATAR_CORS_ORIGINS`` (comma-separated),
``STREAM_AVATAR_ALLOW_UNCONSENTED_AVATARS``,
``STREAM_AVATAR_DISCLOSURE`` (the badge on or off), ``STREAM_AVATAR_DISCLOSURE_TEXT``,
``STREAM_AVATAR_DISCLOSURE_POSITION``, ``STREAM_AVATAR_DISCLOSURE_OPACITY``, ``STREAM_AVATAR_AUDIT_LOG``,
``STREAM_AVATAR_WATERMARK`` (the invisible mark on or off), ``STREAM_AVATAR_INSTANCE_ID``,
``STREAM_AVATAR_JANUS_URL``, ``STREAM_AVATAR_JANUS_ROOM``, ``STREAM_AVATAR_JANUS_CREATE_ROOM``,
``STREAM_AVATAR_JANUS_PIN``, ``STREAM_AVATAR_JANUS_SECRET``, ``STREAM_AVATAR_JANUS_ADMIN_KEY``,
``STREAM_AVATAR_JANUS_API_SECRET``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: settings files need 3.11's tomllib; flags and env still work
    tomllib = None  # type: ignore[assignment]

ENV_PREFIX = "STREAM_AVATAR_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range (one-line message)."""


@dataclass(frozen=True)
class EngineConfig:
    """Streaming engine settings.

    fps: video frames per second of audio time (16000 / fps audio samples per frame; must divide 16000).
    driver: name of the audio-to-motion driver: "learned" (the shipped model in models/motion) or "dsp".
    max_buffer_s: live input buffer bound in seconds of audio; beyond it the oldest audio is dropped.
    device: torch device for rendering; "auto" picks cuda when available, else cpu.
    emotion: the emotion spec, ``NAME[:INTENSITY]`` terms joined by ``+`` (e.g. ``happy:0.7``); the
      name ``auto`` is the emotion inferred from the voice (``auto``, ``auto:0.5``, ``auto+happy:0.3``:
      voice-inferred with an operator emotion mixed in). Default ``auto``. See
      ``stream_avatar.emotion.facs``.
    emotion_prior_neutral: for ``auto``, the prior share of neutral the voice's emotion is read with
      (0 < x < 1; the other seven emotions share the rest). None: the emotion model's own
      (``models/emotion/config.json``, 0.5); 0.125 weighs every emotion alike, as in training; lower
      it where most speech is emotional (drama), raise it where a neutral face matters most.
    """

    fps: int = 25
    driver: str = "learned"
    max_buffer_s: float = 2.0
    device: str = "auto"
    emotion: str = "auto"
    emotion_prior_neutral: float | None = None

    @property
    def emotion_weights(self) -> dict[str, float]:
        from stream_avatar.emotion.facs import parse

        return parse(self.emotion)

    def __post_init__(self) -> None:
        if not 1 <= self.fps <= 60 or 16000 % self.fps:
            raise ConfigError(f"fps must divide 16000 and lie in 1..60, got {self.fps}")
        if not self.driver:
            raise ConfigError("driver must not be empty")
        if not 0.1 <= self.max_buffer_s <= 60.0:
            raise ConfigError(f"max_buffer_s must lie in 0.1..60 s, got {self.max_buffer_s}")
        if not self.device:
            raise ConfigError("device must not be empty")
        from stream_avatar.emotion.facs import EmotionError, parse

        try:
            parse(self.emotion)
        except EmotionError as exc:
            raise ConfigError(f"emotion: {exc}") from None
        prior = self.emotion_prior_neutral
        if prior is not None and not 0.0 < prior < 1.0:
            raise ConfigError(f"emotion_prior_neutral must lie strictly between 0 and 1, got {prior}")


@dataclass(frozen=True)
class AvatarConfig:
    """Which avatar to use and where enrolled avatars live.

    spec: image path or enrolled avatar id; None means the shipped default avatar.
    size: square crop size in pixels (even, for yuv420p video).
    store_dir: avatar store root; None means the per-user data directory.
    allow_unconsented_avatars: also render avatars stored without a consent record (enrolled before
      consent was recorded). Off: such avatars are refused; enrolling always needs a record.
    """

    spec: str | None = None
    size: int = 512
    store_dir: Path | None = None
    allow_unconsented_avatars: bool = False

    def __post_init__(self) -> None:
        if not 64 <= self.size <= 2048 or self.size % 2:
            raise ConfigError(f"size must be an even number of pixels in 64..2048, got {self.size}")


# A web origin as browsers send it in the Origin header: scheme, host, optional port, nothing else.
CORS_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
DISCLOSURE_POSITIONS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
DISCLOSURE_MAX_TEXT = 40


@dataclass(frozen=True)
class DisclosureConfig:
    """The visible "AI-generated" badge composited into every output frame (live and offline).

    enabled: on by default; turning it off is an explicit choice, logged as a warning at start.
    text: the label, printable ASCII (the badge font's character set), at most 40 characters.
    position: the corner, one of ``DISCLOSURE_POSITIONS``.
    opacity: of the badge (its backing box is a little more transparent), 0.2..1: always legible.
    """

    enabled: bool = True
    text: str = "AI-generated"
    position: str = "bottom-right"
    opacity: float = 0.85

    def __post_init__(self) -> None:
        text = self.text.strip()
        if not text:
            raise ConfigError("disclosure text must not be empty (to remove the badge, set enabled = false)")
        if len(text) > DISCLOSURE_MAX_TEXT or not all(" " <= ch <= "~" for ch in text):
            raise ConfigError(
                f"disclosure text must be printable ASCII, at most {DISCLOSURE_MAX_TEXT} characters, "
                f"got {self.text[:60]!r}"
            )
        if self.position not in DISCLOSURE_POSITIONS:
            raise ConfigError(
                f"disclosure position must be one of {', '.join(DISCLOSURE_POSITIONS)}, got {self.position!r}"
            )
        if not 0.2 <= self.opacity <= 1.0:
            raise ConfigError(f"disclosure opacity must lie in 0.2..1, got {self.opacity}")


@dataclass(frozen=True)
class AuditConfig:
    """The audit log: which avatar each session or render used, when and from where (no audio).

    path: the JSON-lines file (appended to, never rotated); None means ``audit.jsonl`` in the avatar
      store's data directory (``stream_avatar.provenance.audit.default_audit_path``).
    """

    path: Path | None = None


@dataclass(frozen=True)
class WatermarkConfig:
    """The invisible watermark in every output frame (``stream_avatar.provenance.watermark``): this
    instance's id, the avatar's id and the time, read back by ``stream-avatar verify``.

    enabled: on by default; turning it off is an explicit choice, logged as a warning at start.
    instance_id: the name this server or machine goes by in the mark; empty means the host name.
    """

    enabled: bool = True
    instance_id: str = ""

    def __post_init__(self) -> None:
        if len(self.instance_id) > 200:
            raise ConfigError("watermark instance_id must be at most 200 characters")


@dataclass(frozen=True)
class ServerConfig:
    """Network settings. Loopback by default: exposing the server is an explicit choice."""

    host: str = "127.0.0.1"
    port: int = 8080
    latency_budget_ms: int = 80
    max_sessions: int = 4
    max_viewers: int = 16
    cpu_fraction: float = 0.6
    audio_jitter_prefetch: int = 0
    # WHIP and WHEP requests must carry ``Authorization: Bearer <token>`` when set (not in repr: the
    # configuration may be logged).
    bearer_token: str | None = field(default=None, repr=False)
    # Web origins (``https://app.example.com``) whose pages may call WHIP/WHEP across origins (CORS);
    # empty: same origin only. ``*`` allows any origin (only sensible together with bearer_token).
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for origin in self.cors_origins:
            if origin != "*" and not CORS_ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"cors_origins: {origin!r} is not an origin (scheme://host[:port], no path) or *"
                )
        token = self.bearer_token
        if token is not None and (len(token) < 16 or not all(33 <= ord(c) <= 126 for c in token)):
            raise ConfigError("bearer_token must be at least 16 printable ASCII characters without spaces")
        if not 0 <= self.port <= 65535:  # 0: the system picks a free port (printed at start)
            raise ConfigError(f"port must lie in 0..65535, got {self.port}")
        if not 40 <= self.latency_budget_ms <= 2000:
            raise ConfigError(f"latency_budget_ms must lie in 40..2000, got {self.latency_budget_ms}")
        if not 1 <= self.max_sessions <= 64:
            raise ConfigError(f"max_sessions must lie in 1..64, got {self.max_sessions}")
        if not 0 <= self.max_viewers <= 1024:
            raise ConfigError(f"max_viewers must lie in 0..1024, got {self.max_viewers}")
        if not 0.05 <= self.cpu_fraction <= 1.0:
            raise ConfigError(f"cpu_fraction must lie in 0.05..1, got {self.cpu_fraction}")
        if not 0 <= self.audio_jitter_prefetch <= 8:
            raise ConfigError(f"audio_jitter_prefetch must lie in 0..8, got {self.audio_jitter_prefetch}")
        if not self.host:
            raise ConfigError("host must not be empty")


@dataclass(frozen=True)
class JanusConfig:
    """Webinar fan-out: streams published into a Janus VideoRoom (``POST /janus/STREAM``).

    url: Janus's HTTP transport with its base path (``http://127.0.0.1:8088/janus``); empty: off.
    room: the VideoRoom room streams are published into unless a request names another.
    create_room: create a missing room (with ``secret`` and ``pin`` when set), else it is an error.
    pin, secret: the room's pin (to join) and secret (set on a room created here).
    admin_key: the VideoRoom plugin's admin_key, when Janus requires it to create rooms.
    api_secret: Janus's api_secret, when its core requires one. The four secrets are never logged.
    """

    url: str = ""
    room: int = 1234
    create_room: bool = False
    pin: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    admin_key: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        try:
            self.settings()
        except ValueError as exc:
            raise ConfigError(f"janus: {exc}") from None

    def settings(self) -> Any:
        """The publisher's ``JanusSettings`` (None when no url is set)."""
        if not self.url:
            return None
        from stream_avatar.server.janus import JanusSettings

        return JanusSettings(
            url=self.url,
            room=self.room,
            pin=self.pin,
            secret=self.secret,
            admin_key=self.admin_key,
            api_secret=self.api_secret,
            create_room=self.create_room,
        )


@dataclass(frozen=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    avatar: AvatarConfig = field(default_factory=AvatarConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    disclosure: DisclosureConfig = field(default_factory=DisclosureConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    watermark: WatermarkConfig = field(default_factory=WatermarkConfig)
    janus: JanusConfig = field(default_factory=JanusConfig)


# Flat key -> (section, field). The flat key is also the env suffix and the CLI override key.
_KEYS: dict[str, tuple[str, str]] = {
    "fps": ("engine", "fps"),
    "driver": ("engine", "driver"),
    "max_buffer_s": ("engine", "max_buffer_s"),
    "device": ("engine", "device"),
    "emotion": ("engine", "emotion"),
    "emotion_prior_neutral": ("engine", "emotion_prior_neutral"),
    "avatar": ("avatar", "spec"),
    "size": ("avatar", "size"),
    "store_dir": ("avatar", "store_dir"),
    "allow_unconsented_avatars": ("avatar", "allow_unconsented_avatars"),
    "host": ("server", "host"),
    "port": ("server", "port"),
    "latency_budget_ms": ("server", "latency_budget_ms"),
    "max_sessions": ("server", "max_sessions"),
    "max_viewers": ("server", "max_viewers"),
    "cpu_fraction": ("server", "cpu_fraction"),
    "audio_jitter_prefetch": ("server", "audio_jitter_prefetch"),
    "bearer_token": ("server", "bearer_token"),
    "cors_origins": ("server", "cors_origins"),
    "disclosure": ("disclosure", "enabled"),
    "disclosure_text": ("disclosure", "text"),
    "disclosure_position": ("disclosure", "position"),
    "disclosure_opacity": ("disclosure", "opacity"),
    "audit_log": ("audit", "path"),
    "watermark": ("watermark", "enabled"),
    "instance_id": ("watermark", "instance_id"),
    "janus_url": ("janus", "url"),
    "janus_room": ("janus", "room"),
    "janus_create_room": ("janus", "create_room"),
    "janus_pin": ("janus", "pin"),
    "janus_secret": ("janus", "secret"),
    "janus_admin_key": ("janus", "admin_key"),
    "janus_api_secret": ("janus", "api_secret"),
}
_SECTIONS: dict[str, type[Any]] = {
    "engine": EngineConfig,
    "avatar": AvatarConfig,
    "server": ServerConfig,
    "disclosure": DisclosureConfig,
    "audit": AuditConfig,
    "watermark": WatermarkConfig,
    "janus": JanusConfig,
}
_BOOLS = {"true": True, "1": True, "yes": True, "on": True}
_BOOLS |= {"false": False, "0": False, "no": False, "off": False}


def _parse(section: str, name: str, value: object, origin: str) -> object:
    """Coerce one value (string from env, TOML scalar or CLI value) to the field's type."""
    if section == "avatar" and name == "spec":
        text = str(value).strip()
        return text or None
    janus_secrets = ("pin", "secret", "admin_key", "api_secret")
    if name == "bearer_token" or (section == "janus" and name in janus_secrets):
        text = str(value).strip()
        return text or None
    if name == "cors_origins":  # a TOML array, or a comma-separated string (env, CLI)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{origin}: cors_origins must be a list of origins, got {value!r}")
        return tuple(sorted({i.strip().rstrip("/") for i in items if i.strip()}))
    if name == "store_dir" or (section, name) == ("audit", "path"):
        text = str(value).strip()
        return Path(text).expanduser() if text else None
    if name in ("enabled", "allow_unconsented_avatars", "create_room"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise ConfigError(f"{origin}: {name} must be true or false, got {value!r}")
    kind = {
        "fps": int,
        "size": int,
        "port": int,
        "latency_budget_ms": int,
        "max_sessions": int,
        "max_viewers": int,
        "audio_jitter_prefetch": int,
        "room": int,
        "max_buffer_s": float,
        "cpu_fraction": float,
        "opacity": float,
        "emotion_prior_neutral": float,
    }.get(name, str)
    if kind is str:
        return str(value).strip()
    try:
        if isinstance(value, bool):  # TOML `true` is not a number
            raise ValueError
        if kind is float:
            if isinstance(value, (int, float, str)):
                return float(value)
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError
    except ValueError:
        raise ConfigError(f"{origin}: {name} must be {kind.__name__}, got {value!r}") from None


def _read_toml(path: Path) -> dict[str, dict[str, object]]:
    if tomllib is None:
        raise ConfigError(f"cannot read {path}: TOML settings files need Python 3.11 or newer")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    out: dict[str, dict[str, object]] = {}
    for section, values in data.items():
        if section not in _SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(_SECTIONS)})")
        known = {f.name for f in dataclasses.fields(_SECTIONS[section])}
        for key, value in values.items():
            if key not in known:
                known_keys = ", ".join(sorted(known))
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}] (known: {known_keys})")
            out.setdefault(section, {})[key] = _parse(section, key, value, str(path))
    return out


def load_config(
    overrides: Mapping[str, object] | None = None,
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration once.

    overrides: flat keys of ``_KEYS`` (``fps``, ``size``, ``avatar``, ``store_dir``, ``driver``,
      ``max_buffer_s``, ``device``, ``host``, ``port``, ``disclosure``, ``audit_log``, ...) from CLI
      flags; ``None`` values are ignored (flag not given).
    config_path: TOML file; if None, ``STREAM_AVATAR_CONFIG`` names one (optional).
    environ: the environment to read; ``None`` means ``os.environ`` (tests pass a dict).

    Raises ConfigError (a ValueError) with a one-line message on any bad value.
    """
    env = os.environ if environ is None else environ
    values: dict[str, dict[str, object]] = {name: {} for name in _SECTIONS}

    path = config_path if config_path is not None else env.get(CONFIG_ENV) or None
    if path is not None:
        for section, entries in _read_toml(Path(path).expanduser()).items():
            values[section].update(entries)

    for key, (section, name) in _KEYS.items():
        raw = env.get(ENV_PREFIX + key.upper())
        if raw is not None:
            values[section][name] = _parse(section, name, raw, ENV_PREFIX + key.upper())

    for key, value in (overrides or {}).items():
        if key not in _KEYS:
            raise ConfigError(f"unknown setting {key!r}")
        if value is None:
            continue
        section, name = _KEYS[key]
        values[section][name] = _parse(section, name, value, f"--{key.replace('_', '-')}")

    try:
        return Config(**{section: cls(**values[section]) for section, cls in _SECTIONS.items()})
    except TypeError as exc:  # a wrong type slipped through a TOML value, e.g. a table for a scalar
        raise ConfigError(str(exc)) from None
