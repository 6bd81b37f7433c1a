"""Signed packages: an app holding the publisher's public key refuses anything else."""

from __future__ import annotations

import json
import shutil

import pytest

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import PackageError


@pytest.fixture
def signed(tiny_packages, tmp_path):
    package = tmp_path / "signed.edge"
    shutil.copytree(tiny_packages[("bert", "text-classification")], package)
    assert main(["keygen", "--out", str(tmp_path / "publisher")]) == 0
    assert main(["sign", str(package), "--key", str(tmp_path / "publisher")]) == 0
    return package, tmp_path / "publisher.pub"


def test_signed_package_loads_with_the_publishers_key(signed):
    package, public = signed
    assert edgeinfer.load(package, verify_key=public).run("good movie").label is not None
    assert edgeinfer.load(package, verify_key=public.read_bytes()) is not None


def test_manifest_changed_after_signing_is_refused(signed):
    package, public = signed
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["model"]["labels"] = ["positive", "negative"]
    (package / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="signature does not match"):
        edgeinfer.load(package, verify_key=public)
    edgeinfer.load(package)  # without a key the (consistent) package still opens


def test_other_key_and_unsigned_packages_are_refused(signed, tiny_packages, tmp_path):
    package, _ = signed
    assert main(["keygen", "--out", str(tmp_path / "stranger")]) == 0
    with pytest.raises(PackageError, match="signature does not match"):
        edgeinfer.load(package, verify_key=tmp_path / "stranger.pub")
    with pytest.raises(PackageError, match="not signed"):
        edgeinfer.load(tiny_packages[("bert", "text-classification")], verify_key=tmp_path / "stranger.pub")


def test_an_oversized_signature_or_key_is_refused_before_it_is_read(signed, tmp_path):
    package, public = signed
    with open(package / "manifest.sig", "r+b") as sig:
        sig.truncate(8 << 30)  # sparse: 8 GB on paper, nothing on disk
    with pytest.raises(PackageError, match="8589934592 bytes, not an Ed25519 signature"):
        edgeinfer.load(package, verify_key=public)
    huge_key = tmp_path / "huge.pub"
    with open(huge_key, "wb") as key:
        key.truncate(8 << 30)
    with pytest.raises(edgeinfer.InputError, match="verify_key must be an Ed25519 public key"):
        edgeinfer.load(package, verify_key=huge_key)


def test_cli_refuses_a_bad_key_with_one_line(signed, tmp_path, capsys):
    package, _ = signed
    (tmp_path / "junk.pem").write_text("not a key")
    assert main(["sign", str(package), "--key", str(tmp_path / "junk.pem")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeinfer: error:") and "\n" not in err
    assert main(["keygen", "--out", str(tmp_path / "publisher")]) == 2  # never overwrites a key


def test_a_forged_verification_stamp_does_not_skip_the_hash_when_a_key_is_given(signed, tmp_path, monkeypatch):
    from edgeinfer.runtime.verified import identity, write_stamp

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    package, public = signed
    head = package / "graphs" / "head.onnx"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    head.write_bytes(bytes(data))
    manifest_bytes = (package / "manifest.json").read_bytes()
    forged = {entry["path"]: identity(package / entry["path"]) for entry in json.loads(manifest_bytes)["files"]}
    write_stamp(manifest_bytes, forged)
    with pytest.raises(PackageError, match="sha256"):
        edgeinfer.load(package, verify_key=public)
