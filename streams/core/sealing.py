"""Sealed feature rows: a model's input row, encrypted, where the model reads personal values.

``{ns}.scored`` and ``{ns}.labeled`` carry each prediction's input row so
the trainer can retrain from it. When any of the model's columns comes from
a personal field, that row is sealed instead of sent in clear: AES-256-GCM
under a key derived from the PII key, with the model and the request id
as associated data (a sealed row moved onto another record does not open).
The trainer, holding the same PII key, opens it; anyone reading the topic
without the key sees random bytes.

Why a key per batch: GCM's 96-bit nonces must never repeat under one key,
and random nonces are only safe for about 2^32 messages per key, which a
busy worker reaches in a day. So each batch draws a random 128-bit salt,
derives its own key from the PII key with HKDF-SHA256, and numbers its rows
as nonces; the salt and the row number travel in the sealed bytes.

A sealed row: ``0x01`` (format), the key's id (4 bytes of HMAC-SHA256 of
the PII key, so a row sealed under another key says so instead of looking
altered), salt (16 bytes), row number (4 bytes, big endian), the
ciphertext (4 bytes per column) and GCM's 16-byte tag.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT = 1
_KEY_ID = 4
_SALT = 16
_HEAD = 1 + _KEY_ID + _SALT + 4
_TAG = 16
_INFO = b"driftline.features.v1"
_KEYS_KEPT = 256  # opened batches' keys kept (the trainer reads rows of one batch together)


class SealError(ValueError):
    """A sealed row that does not open: another PII key, another request's row, or altered bytes."""


def _batch_key(secret: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(secret))


def _nonce(row: int) -> bytes:
    return row.to_bytes(12, "big")


def _aad(model: str, request_id: str) -> bytes:
    return b"".join((bytes([FORMAT]), model.encode("utf-8", "surrogatepass"), b"\0",
                     request_id.encode("utf-8", "surrogatepass")))


def key_id(secret: bytes) -> bytes:
    """4 bytes that tell PII keys apart without revealing them."""
    return hmac.new(secret, b"driftline.pii-key-id", hashlib.sha256).digest()[:_KEY_ID]


def seal_rows(secret: bytes, model: str, request_ids: Sequence[str], rows: Sequence[bytes]) -> list[bytes]:
    """Each row sealed for its model and request id, under one fresh batch key (one AEAD call per row: it must
    be per record, since each record travels alone)."""
    if len(rows) >= 1 << 32:
        raise ValueError("a batch of 2^32 rows or more cannot be sealed under one batch key")
    salt = os.urandom(_SALT)
    aead = _batch_key(secret, salt)
    head = bytes([FORMAT]) + key_id(secret) + salt
    return [head + i.to_bytes(4, "big") + aead.encrypt(_nonce(i), row, _aad(model, rid))
            for i, (rid, row) in enumerate(zip(request_ids, rows, strict=True))]


class Opener:
    """Opens sealed rows with the PII key; keeps the last batches' derived keys (HKDF per record is the cost)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._id = key_id(secret)
        self._keys: OrderedDict[bytes, AESGCM] = OrderedDict()

    def open(self, model: str, request_id: str, sealed: bytes) -> bytes:
        """The row's float32 bytes; :class:`SealError` when it does not open."""
        if len(sealed) < _HEAD + _TAG or sealed[0] != FORMAT:
            raise SealError(f"not a sealed row (format {sealed[:1].hex() or 'none'}, {len(sealed)} bytes)")
        if sealed[1:1 + _KEY_ID] != self._id:
            raise SealError(f"the row was sealed under another PII key (id {sealed[1:1 + _KEY_ID].hex()}, this "
                            f"key's {self._id.hex()}): give the trainer the key the workers seal with")
        salt = sealed[1 + _KEY_ID:1 + _KEY_ID + _SALT]
        aead = self._keys.get(salt)
        if aead is None:
            aead = self._keys[salt] = _batch_key(self._secret, salt)
            if len(self._keys) > _KEYS_KEPT:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(salt)
        row = int.from_bytes(sealed[1 + _KEY_ID + _SALT:_HEAD], "big")
        try:
            return aead.decrypt(_nonce(row), sealed[_HEAD:], _aad(model, request_id))
        except InvalidTag:
            raise SealError("the sealed row does not open for this model and request id (another record's row, "
                            "or altered bytes)") from None
