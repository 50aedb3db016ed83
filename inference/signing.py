"""Signed model versions: authenticity, not only integrity.

A manifest's sha256 proves the ONNX file is the one registered beside it;
whoever can write the registry can write both. A signature (Ed25519, over
the manifest's and the reference profile's digests) proves a holder of the
private key registered the version: workers given the public key
(``model_verify_key_file``) refuse a version without a valid
``manifest.sig``. The private key stays with whoever registers versions
(an operator's machine, the trainer's Secret).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from driftline.inference.errors import ModelError

SIGNATURE_FILE = "manifest.sig"
_DOMAIN = b"driftline model version v1\n"


def signed_bytes(directory: Path) -> bytes:
    """What a version's signature covers: the digests of its manifest (which holds the model's sha256) and profile."""
    manifest = (directory / "manifest.json").read_bytes()
    profile = directory / "profile.json"
    return (_DOMAIN + hashlib.sha256(manifest).hexdigest().encode() + b"\n"
            + (hashlib.sha256(profile.read_bytes()).hexdigest().encode() if profile.is_file() else b"-"))


def generate_keys(private_file: Path, public_file: Path) -> None:
    """A new Ed25519 key pair as PEM files; the private one readable by its owner only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for path in (private_file, public_file):
        if path.exists():
            raise ModelError(f"{path} exists; keys are not overwritten, choose another path")
    key = Ed25519PrivateKey.generate()
    private_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    private_file.chmod(0o600)
    public_file.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))


def sign_version(directory: Path, private_key_pem: bytes) -> Path:
    """Write ``manifest.sig`` for the version in ``directory``; its path."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"the model signing key is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ModelError("the model signing key must be an Ed25519 key (driftline model keygen makes one)")
    target = directory / SIGNATURE_FILE
    target.write_text(base64.b64encode(key.sign(signed_bytes(directory))).decode() + "\n")
    return target


def verify_version(directory: Path, public_key_pem: bytes) -> None:
    """Nothing when ``directory``'s version is signed by the key's owner; :class:`ModelError` saying why not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(public_key_pem)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"model_verify_key_file is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ModelError("model_verify_key_file must hold an Ed25519 public key (driftline model keygen)")
    sig_file = directory / SIGNATURE_FILE
    if not sig_file.is_file():
        raise ModelError(f"{directory} is not signed (no {SIGNATURE_FILE}) and workers require signed versions: "
                         "register it with --sign-key, or sign it with driftline model sign")
    try:
        key.verify(base64.b64decode(sig_file.read_text().strip(), validate=True), signed_bytes(directory))
    except (InvalidSignature, ValueError):
        raise ModelError(f"{directory}: the signature does not match (the manifest or profile changed after "
                         "signing, or another key signed it); register it again as a new version") from None
