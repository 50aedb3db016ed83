"""A throwaway PKI for the TLS tests, made with the openssl command: CAs, and certificates they sign."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def make_ca(d: Path, name: str) -> Path:
    """A self-signed CA, ``d/name.crt`` (returned) and ``d/name.key``, valid two days."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-subj", f"/CN={name}", "-days", "2", cwd=d)
    return d / f"{name}.crt"


def sign(d: Path, ca: str, name: str, san: str | None, key_password: str | None = None) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by the CA ``ca`` (made by :func:`make_ca` in ``d``): (cert, key).

    ``san``: the subjectAltName (``IP:127.0.0.1`` for a server); ``key_password``:
    the key is encrypted with it, else written in clear (PKCS#8).
    """
    key_args = ["-passout", f"pass:{key_password}"] if key_password else ["-nodes"]
    openssl("req", "-newkey", "rsa:2048", *key_args, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", ext.name, cwd=d)
    return d / f"{name}.crt", d / f"{name}.key"
