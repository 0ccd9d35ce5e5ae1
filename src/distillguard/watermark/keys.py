"""Watermark keys: read from a secret file or an environment variable, rotated as a ring.

Format (file or variable): one key per line (a variable may also separate keys with commas),
optionally named ``name:secret``. The FIRST key is current and watermarks new text; the rest
are previous keys, still tried at detection. Rotating = put a new line on top. Lines starting
with ``#`` are ignored. Secrets never leave this module: everything else sees a ``key_id``
(the given name, or a short fingerprint that does not reveal the secret).
"""

from __future__ import annotations

import hashlib
import os
import secrets as _secrets
from dataclasses import dataclass, field
from pathlib import Path

MIN_SECRET_CHARS = 16


class WatermarkKeyError(ValueError):
    """The watermark key is missing or malformed; the message says how to fix it."""


@dataclass(frozen=True)
class WatermarkKey:
    key_id: str
    secret: bytes = field(repr=False)

    def __repr__(self) -> str:  # never print the secret, even by accident
        return f"WatermarkKey(key_id={self.key_id!r})"


def fingerprint(secret: bytes) -> str:
    return "wk_" + hashlib.blake2b(secret, digest_size=6, person=b"dg-wm-fpr").hexdigest()


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[WatermarkKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise WatermarkKeyError("the watermark key ring is empty: give at least one key")

    @property
    def current(self) -> WatermarkKey:
        return self.keys[0]

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"KeyRing({[k.key_id for k in self.keys]})"

    @classmethod
    def parse(cls, text: str, source: str) -> KeyRing:
        keys: list[WatermarkKey] = []
        for raw in text.replace(",", "\n").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, secret = line.partition(":")
            if not sep:
                name, secret = "", line
            secret = secret.strip()
            if len(secret) < MIN_SECRET_CHARS:
                raise WatermarkKeyError(
                    f"a watermark key in {source} is shorter than {MIN_SECRET_CHARS} characters; "
                    "use a long random secret (e.g. `distillguard watermark new-key`)"
                )
            b = secret.encode()
            keys.append(WatermarkKey(name.strip() or fingerprint(b), b))
        if not keys:
            raise WatermarkKeyError(f"no watermark key found in {source}: put one secret per line")
        return cls(tuple(keys))

    @classmethod
    def from_file(cls, path: Path | str) -> KeyRing:
        p = Path(path)
        if not p.is_file():
            raise WatermarkKeyError(f"watermark key file {p} does not exist (set watermark.key_file or use --key-env)")
        return cls.parse(p.read_text(encoding="utf-8"), f"key file {p}")

    @classmethod
    def from_env(cls, name: str) -> KeyRing:
        value = os.environ.get(name)
        if not value:
            raise WatermarkKeyError(f"environment variable {name} holding the watermark key is not set")
        return cls.parse(value, f"${name}")

    @classmethod
    def from_secret(cls, secret: str | bytes, key_id: str | None = None) -> KeyRing:
        b = secret.encode() if isinstance(secret, str) else secret
        return cls((WatermarkKey(key_id or fingerprint(b), b),))


def load_key_ring(key_file: Path | str | None, key_env: str | None) -> KeyRing:
    """The file wins when both are configured (a file can be mounted as a secret)."""
    if key_file:
        return KeyRing.from_file(key_file)
    if key_env:
        return KeyRing.from_env(key_env)
    raise WatermarkKeyError("no watermark key configured: set watermark.key_file or watermark.key_env")


def new_secret() -> str:
    return _secrets.token_hex(32)
