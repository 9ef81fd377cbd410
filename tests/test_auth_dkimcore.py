"""dkimcore against dkimpy 1.1, whose results it must give: tag lists, the
signature-field checks (their messages too), header canonicalization, DER
RSA keys and RSASSA-PKCS1-v1_5, on real keys and on generated input."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys

import dkim
import dkim.canonicalization
import dkim.crypto
import dkim.util
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quarantine.auth import dkimcore

TAG_BYTES = st.binary(max_size=40) | st.sampled_from(
    [b"v=1", b"a=rsa-sha256", b" b = x ", b"=x", b"a", b"a-b=1", b"1a=2", b";", b"h=from:to"]
)


def _outcome(call: object, *args: object) -> tuple[str, object]:
    try:
        return "ok", call(*args)  # type: ignore[operator]
    except Exception as exc:
        return "error", str(exc)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(parts=st.lists(TAG_BYTES, max_size=6))
def test_parse_tag_value_as_dkimpy(parts: list[bytes]) -> None:
    text = b";".join(parts)
    ours, theirs = (
        _outcome(dkimcore.parse_tag_value, text),
        _outcome(dkim.util.parse_tag_value, text),
    )
    assert ours[0] == theirs[0], text
    if ours[0] == "ok":
        assert ours == theirs


SIG_VALUES = {
    b"v": [b"1", b"2", b""],
    b"a": [b"rsa-sha256", b"rsa-sha1", b"ed25519-sha256", b"rsa-md5"],
    b"b": [b"dGVzdA==", b"dGVzdA", b"!!!!", b"dG Vz dA =="],
    b"bh": [b"dGVzdA==", b"dGVzd", b"abcd efgh"],
    b"d": [b"example.test", b"ex(ample", "bücher.test".encode(), b"a@b"],
    b"h": [b"from:to", b"from"],
    b"s": [b"sel"],
    b"l": [b"100", b"x", b"1" * 80],
    b"t": [b"1", b"x", b"9999999999"],
    b"x": [b"1", b"x", b"9999999999", b"0"],
    b"c": [b"relaxed/relaxed"],
}


@settings(max_examples=600, deadline=None, derandomize=True)
@given(
    chosen=st.fixed_dictionaries(
        {},
        optional={
            key: st.sampled_from(values)  # type: ignore[misc]
            for key, values in SIG_VALUES.items()
        },
    )
)
def test_signature_field_checks_as_dkimpy(chosen: dict[bytes, bytes]) -> None:
    """The same verdict and the same text (callers map the text to letters)."""
    ours = _outcome(dkimcore.validate_signature_fields, chosen)
    theirs = _outcome(dkim.validate_signature_fields, chosen)
    assert ours == theirs, chosen


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    name=st.sampled_from([b"Subject", b"FROM ", b"x-Odd"]),
    value=st.binary(max_size=60).map(lambda v: v + b"\r\n"),
    c=st.sampled_from([None, b"simple", b"relaxed", b"relaxed/simple", b"simple/relaxed"]),
)
def test_header_canonicalization_as_dkimpy(name: bytes, value: bytes, c: bytes | None) -> None:
    policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(c)
    header_form, body_form = dkimcore.canonicalization(c)
    assert (header_form, body_form) == (
        policy.header_algorithm.name.decode(),
        policy.body_algorithm.name.decode(),
    )
    ((cname, cvalue),) = policy.canonicalize_headers([(name, value)])
    assert dkimcore.canonical_header(header_form, name, value) == cname + b":" + cvalue


@pytest.mark.parametrize("c", [b"", b"fancy", b"simple/relaxed/simple", b"relaxed/"])
def test_unknown_canonicalization_refused_as_by_dkimpy(c: bytes) -> None:
    with pytest.raises(dkim.canonicalization.InvalidCanonicalizationPolicyError):
        dkim.canonicalization.CanonicalizationPolicy.from_c_value(c)
    with pytest.raises(dkimcore.InvalidCanonicalization):
        dkimcore.canonicalization(c)


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, bytes]:
    """(PEM private key, SubjectPublicKeyInfo DER, bare RSAPublicKey DER) by openssl."""
    where = tmp_path_factory.mktemp("rsa")
    key = where / "key.pem"
    run = subprocess.run
    run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"], check=True,
        capture_output=True)  # fmt: skip
    spki = run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
               check=True, capture_output=True).stdout  # fmt: skip
    bare = run(["openssl", "rsa", "-in", str(key), "-RSAPublicKey_out", "-outform", "DER"],
               check=True, capture_output=True).stdout  # fmt: skip
    return key.read_bytes(), spki, bare


def test_public_keys_read_as_dkimpy(rsa_key: tuple[bytes, bytes, bytes]) -> None:
    _, spki, bare = rsa_key
    for der in (spki, bare):
        parsed = dkim.crypto.parse_public_key(der)
        assert dkimcore.parse_public_key(der) == (parsed["modulus"], parsed["publicExponent"])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(cut=st.integers(0, 300), position=st.integers(0, 299), byte=st.integers(0, 255))
def test_damaged_keys_refused_as_by_dkimpy(
    rsa_key: tuple[bytes, bytes, bytes], cut: int, position: int, byte: int
) -> None:
    """Truncated or altered DER: both refuse it, or both read the same numbers."""
    _, spki, _ = rsa_key
    der = bytearray(spki[: len(spki) - cut])
    if position < len(der):
        der[position] = byte
    try:
        parsed = dkim.crypto.parse_public_key(bytes(der))
        theirs: object = (parsed["modulus"], parsed["publicExponent"])
    except Exception:
        theirs = "error"
    try:
        ours: object = dkimcore.parse_public_key(bytes(der))
    except Exception:
        ours = "error"
    assert ours == theirs


def test_rsa_verification_as_dkimpy(rsa_key: tuple[bytes, bytes, bytes]) -> None:
    """A real signature verifies; one bit changed in it, or another digest,
    fails; both as dkimpy says, with hashlib's and the built-in hashers."""
    pem, spki, _ = rsa_key
    private = dkim.crypto.parse_pem_private_key(pem)
    public = dkim.crypto.parse_public_key(spki)
    modulus, exponent = dkimcore.parse_public_key(spki)
    for name in ("sha256", "sha1"):
        signature = bytes(
            dkim.crypto.RSASSA_PKCS1_v1_5_sign(hashlib.new(name, b"message"), private)
        )
        bad = bytes([signature[0] ^ 1]) + signature[1:]
        for hasher_of in (
            lambda data, name=name: hashlib.new(name, data),
            lambda data, name=name: _updated(dkimcore.new_hash(name), data),
        ):
            for sig, data, want in (
                (signature, b"message", True),
                (bad, b"message", False),
                (signature, b"massage", False),
            ):
                theirs = dkim.crypto.RSASSA_PKCS1_v1_5_verify(hasher_of(data), sig, public)
                ours = dkimcore.rsa_verify(modulus, exponent, hasher_of(data), sig)
                assert ours == theirs == want


def _updated(hasher: object, data: bytes) -> object:
    hasher.update(data)  # type: ignore[attr-defined]
    return hasher


def test_hashes_built_in_when_small_openssl_when_large() -> None:
    """Small inputs are hashed without loading OpenSSL (a fresh process shows
    no _hashlib), large ones by hashlib; the digests are the same."""
    probe = (
        "import sys\n"
        "from quarantine.auth import dkimcore\n"
        "h = dkimcore.new_hash('sha256', 5000); h.update(b'x')\n"
        "print('_hashlib' in sys.modules, h.hexdigest())\n"
        "h = dkimcore.new_hash('sha256', dkimcore.BUILTIN_HASH_LIMIT + 1); h.update(b'x')\n"
        "print('_hashlib' in sys.modules, h.hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    ).stdout.split()  # fmt: skip
    digest = hashlib.sha256(b"x").hexdigest()
    assert out == ["False", digest, "True", digest]
    assert base64.b64decode(b"dGVzdA==", validate=True) == dkimcore.base64_strict(b"dGVzdA==")
    with pytest.raises(ValueError):
        dkimcore.base64_strict(b"dGVz dA==")
