"""Ed25519 package signatures, so an app can refuse packages it did not publish.

The signature covers `manifest.json` byte for byte; the manifest holds the size and sha256 of every
file the package uses, and the reader checks those, so one signature covers the whole package.
It is stored beside the manifest as `manifest.sig` (64 raw bytes). Keys are PEM files made by
`edgeinfer keygen`. The `cryptography` package (extra `edgeinfer[signing]`) does the cryptography;
it is imported only when a package is signed or a key is given.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from ..errors import InputError, PackageError
from ..manifest import MANIFEST_NAME

SIGNATURE_NAME = "manifest.sig"
SIGNATURE_BYTES = 64
MAX_KEY_BYTES = 64 * 1024  # a PEM public key is ~113 bytes


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise InputError("package signing needs the `cryptography` package: pip install 'edgeinfer[signing]'") from None
    return InvalidSignature, serialization, ed25519


def generate_key(path: Path) -> tuple[Path, Path]:
    """A new private key at `path` (mode 0600) and its public key at `path.pub`."""
    _, serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_path = path.with_name(path.name + ".pub")
    if path.exists() or public_path.exists():
        raise InputError(f"{path} or {public_path} already exists; choose another name")
    if not path.parent.is_dir():
        raise InputError(f"the folder {path.parent} does not exist; create it first")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(private)
        public_path.write_bytes(public)
    except OSError as err:
        path.unlink(missing_ok=True)
        raise InputError(f"cannot write the key pair at {path} ({err.strerror}); choose a writable folder") from None
    return path, public_path


def sign_package(root: Path, private_key: Path) -> Path:
    _, serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        raise InputError(f"{private_key} is not a readable PEM private key; make one with `edgeinfer keygen`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InputError(f"{private_key} is not an Ed25519 key; make one with `edgeinfer keygen`")
    manifest = Path(root) / MANIFEST_NAME
    if not manifest.is_file():
        raise InputError(f"{root} has no {MANIFEST_NAME}; it is not an edge package")
    signature = key.sign(manifest.read_bytes())
    target = Path(root) / SIGNATURE_NAME
    temporary = target.with_name(f".{SIGNATURE_NAME}.tmp-{uuid.uuid4().hex[:8]}")
    temporary.write_bytes(signature)
    os.replace(temporary, target)
    return target


def _public_key(verify_key: Any):
    _, serialization, ed25519 = _crypto()
    if isinstance(verify_key, ed25519.Ed25519PublicKey):
        return verify_key
    try:
        if isinstance(verify_key, bytes) and len(verify_key) == 32:
            return ed25519.Ed25519PublicKey.from_public_bytes(verify_key)
        if not isinstance(verify_key, bytes) and Path(verify_key).stat().st_size > MAX_KEY_BYTES:
            raise ValueError("too large for a public key")
        data = verify_key if isinstance(verify_key, bytes) else Path(verify_key).read_bytes()
        key = serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError):
        raise InputError("verify_key must be an Ed25519 public key: a PEM file, its bytes, or 32 raw bytes") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InputError("verify_key is not an Ed25519 public key")
    return key


def verify_signature(root: Path, manifest_bytes: bytes, verify_key: Any) -> None:
    invalid, _, _ = _crypto()
    key = _public_key(verify_key)
    signature_path = Path(root) / SIGNATURE_NAME
    if not signature_path.is_file() or signature_path.is_symlink():
        raise PackageError(f"package is not signed ({SIGNATURE_NAME} missing) but a verify_key was given; refusing it")
    size = signature_path.stat().st_size
    if size != SIGNATURE_BYTES:  # checked before reading: a crafted file may be gigabytes
        raise PackageError(f"{SIGNATURE_NAME} is {size} bytes, not an Ed25519 signature ({SIGNATURE_BYTES} bytes); "
                           f"sign the package again with `edgeinfer sign`")
    signature = signature_path.read_bytes()
    try:
        key.verify(signature, manifest_bytes)
    except invalid:
        raise PackageError("package signature does not match this key; it was not published by the key's "
                           "owner or was changed after signing") from None
