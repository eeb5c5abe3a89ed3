"""Signed notes and log checkpoints (C2SP ``signed-note`` and ``tlog-checkpoint``).

A checkpoint is the note text ``<origin>\\n<size>\\n<base64 root>\\n[<extension>\\n]*``, followed
by a blank line and signature lines ``— <key name> <base64(4-byte key id || signature)>\\n``.
The log signs with Ed25519 (signature type 0x01: key id = ``SHA-256(name || 0x0A || 0x01 ||
pubkey)[:4]``); verifiers also accept ECDSA P-256 keys (type 0x02, Rekor v1 style).

Trust assumption: a note is untrusted until ``open_note`` / ``verify_checkpoint`` checked it
against keys the caller pinned. Following the spec (and Go's ``sumdb/note``): signatures by
unknown (name, key id) pairs are ignored, a known key whose signature fails rejects the note (a
forged co-signature is an attack, not noise), and at least one known key must verify.

This is one of the modules allowed to import ``cryptography`` (style rule 14). Log keys are their
own types (``NoteSigner`` / ``NoteVerifier``): an exchange member key can never sign a checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from exchange.errors import ConfigurationError, VerificationError

__all__ = [
    "MAX_SIGNATURES",
    "Checkpoint",
    "NoteError",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "SignedNote",
    "format_checkpoint",
    "open_note",
    "parse_checkpoint",
    "parse_unverified_note",
    "sign_checkpoint",
    "verify_checkpoint",
]

MAX_SIGNATURES = 100
"""Go's limit; C2SP requires verifiers to accept at least 16."""
MAX_TREE_SIZE = 2**64 - 1
ROOT_HASH_SIZE = 32
ALG_ED25519 = 0x01
ALG_ECDSA = 0x02
_DASH = "\u2014 "


class NoteError(VerificationError):
    """A signed note or checkpoint is malformed or does not verify."""

    code = "Server.Audit.InvalidCheckpoint"


def _valid_name(name: str) -> bool:
    """C2SP: a key name is non-empty, has no Unicode spaces and no plus sign."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise NoteError("bad base64") from exc


def _ed25519_key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


# --- keys --------------------------------------------------------------------------------------


class NoteVerifier:
    """A pinned note verifier key (``vkey``): Ed25519 (0x01) or ECDSA P-256 (0x02)."""

    def __init__(
        self,
        name: str,
        key_id: bytes,
        key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey,
        vkey: str,
    ) -> None:
        self.name = name
        self.key_id = key_id
        self._key = key
        self._vkey = vkey

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex key id>+<base64(type || key)>`` (split on the first two ``+``)."""
        parts = vkey.split("+", 2)
        if len(parts) != 3 or not _valid_name(parts[0]) or len(parts[1]) != 8:
            raise ConfigurationError("malformed verifier key")
        name, hex_id, b64 = parts
        try:
            key_id = bytes.fromhex(hex_id)
            raw = _b64decode(b64)
        except (ValueError, NoteError) as exc:
            raise ConfigurationError("malformed verifier key") from exc
        if not raw:
            raise ConfigurationError("malformed verifier key")
        key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
        if raw[0] == ALG_ED25519 and len(raw) == 33:
            key = ed25519.Ed25519PublicKey.from_public_bytes(raw[1:])
            expected = _ed25519_key_id(name, raw[1:])
        elif raw[0] == ALG_ECDSA:
            try:
                loaded = serialization.load_der_public_key(raw[1:])
            except ValueError as exc:
                raise ConfigurationError("malformed verifier key") from exc
            if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
                loaded.curve, ec.SECP256R1
            ):
                raise ConfigurationError("ECDSA verifier keys must be P-256")
            key = loaded
            expected = hashlib.sha256(raw[1:]).digest()[:4]
        else:
            raise ConfigurationError("unsupported verifier key type")
        if expected != key_id:
            raise ConfigurationError("verifier key id does not match the key")
        return cls(name, key_id, key, vkey)

    def vkey(self) -> str:
        return self._vkey

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            if isinstance(self._key, ed25519.Ed25519PublicKey):
                self._key.verify(signature, message)
            else:
                self._key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True


class NoteSigner:
    """The log's Ed25519 note signing key (Go ``skey``: ``PRIVATE+KEY+<name>+<id>+<seed>``)."""

    def __init__(self, name: str, key: ed25519.Ed25519PrivateKey) -> None:
        if not _valid_name(name):
            raise ConfigurationError("a note key name must be non-empty, without spaces or '+'")
        self.name = name
        self._key = key
        self._public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = _ed25519_key_id(name, self._public)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def create(cls, path: Path, name: str) -> NoteSigner:
        """Provisioning only: a new log key written to ``path`` (Go ``skey`` text, mode 0600).

        Refuses to replace a key that exists: checkpoints it signed are pinned by auditors."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise ConfigurationError(f"a log key already exists in {path}") from exc
        signer = cls.generate(name)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(signer.skey() + "\n")
        return signer

    @classmethod
    def load(cls, path: Path, name: str) -> NoteSigner:
        """The log key kept in ``path``; never made here (a missing key is an error).

        Refuses a stored key whose name is not ``name``: a log must not silently change origin.
        """
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the log key {path}") from exc
        signer = cls.from_skey(text.strip())
        if signer.name != name:
            raise ConfigurationError(f"the log key in {path} is for {signer.name!r}, not {name!r}")
        return signer

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise ConfigurationError("malformed signer key")
        try:
            raw = _b64decode(parts[4])
        except NoteError as exc:
            raise ConfigurationError("malformed signer key") from exc
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise ConfigurationError("only Ed25519 signer keys are supported")
        signer = cls(parts[2], ed25519.Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_id.hex() != parts[3]:
            raise ConfigurationError("signer key id does not match the key")
        return signer

    def skey(self) -> str:
        seed = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        b64 = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{b64}"

    def vkey(self) -> str:
        b64 = base64.b64encode(bytes([ALG_ED25519]) + self._public).decode()
        return f"{self.name}+{self.key_id.hex()}+{b64}"

    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_vkey(self.vkey())

    def sign(self, text: str) -> str:
        """The signed note of ``text`` (which must be valid note text ending in a newline)."""
        _check_text(text)
        sig = self._key.sign(text.encode())
        line = base64.b64encode(self.key_id + sig).decode()
        return f"{text}\n{_DASH}{self.name} {line}\n"


# --- notes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A parsed note: ``text`` (ending in a newline) and its signatures, verified or not."""

    text: str
    signatures: tuple[NoteSignature, ...]


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("malformed note: text must end in a newline")
    if any((ord(c) < 0x20 and c != "\n") or c == "\x7f" for c in text):
        raise NoteError("malformed note: control character")


def parse_unverified_note(note: str | bytes) -> SignedNote:
    """Split a note at its LAST blank line into text and signature lines (C2SP signed-note)."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError("malformed note: not UTF-8") from exc
    _check_text(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no signature block")
    text, block = note[: split + 1], note[split + 2 :]
    if not text.strip("\n") or not block:
        raise NoteError("malformed note: empty text or no signatures")
    sigs: list[NoteSignature] = []
    for line in block.removesuffix("\n").split("\n"):
        if not line.startswith(_DASH):
            raise NoteError("malformed note: bad signature line")
        name, sep, b64 = line[len(_DASH) :].partition(" ")
        if not sep or not _valid_name(name) or " " in b64:
            raise NoteError("malformed note: bad signature line")
        raw = _b64decode(b64)
        if len(raw) < 5:
            raise NoteError("malformed note: short signature")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
        if len(sigs) > MAX_SIGNATURES:
            raise NoteError("malformed note: too many signatures")
    return SignedNote(text, tuple(sigs))


def open_note(note: str | bytes, verifiers: Iterable[NoteVerifier]) -> SignedNote:
    """Parse and verify; the result holds only the signatures of known keys, all verified.

    Unknown (name, key id) pairs are ignored; a known key that fails rejects the note; no known
    key at all rejects it (a note anyone could have written).
    """
    parsed = parse_unverified_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    message = parsed.text.encode()
    verified: list[NoteSignature] = []
    for sig in parsed.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        if not verifier.verify(message, sig.signature):
            raise NoteError("invalid signature")
        if sig not in verified:
            verified.append(sig)
    if not verified:
        raise NoteError("no signature by a known key")
    return SignedNote(parsed.text, tuple(verified))


# --- checkpoints -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The body of a tlog-checkpoint: origin, tree size, root hash and extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def format_checkpoint(cp: Checkpoint) -> str:
    """The note text of ``cp`` (each line ending in a newline)."""
    lines = [cp.origin, str(cp.size), base64.b64encode(cp.root).decode(), *cp.extensions]
    return "".join(f"{line}\n" for line in lines)


def parse_checkpoint(
    text: str, *, origin: str | None = None, hash_size: int | None = ROOT_HASH_SIZE
) -> Checkpoint:
    """Parse checkpoint note text strictly (tlog-checkpoint §"Note text").

    ``hash_size=None`` accepts roots of any length (upstream test vectors use fake roots).
    """
    if not text.endswith("\n"):
        raise NoteError("malformed checkpoint: missing final newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("malformed checkpoint: fewer than three lines")
    name, size_text, root_text, *extensions = lines
    if not name:
        raise NoteError("malformed checkpoint: empty origin")
    if origin is not None and name != origin:
        raise NoteError("checkpoint is for another log")
    if not size_text.isascii() or not size_text.isdigit():
        raise NoteError("malformed checkpoint: size is not a decimal number")
    if size_text != "0" and size_text.startswith("0"):
        raise NoteError("malformed checkpoint: size has leading zeros")
    size = int(size_text)
    if size > MAX_TREE_SIZE:
        raise NoteError("malformed checkpoint: size out of range")
    root = _b64decode(root_text)
    if not root or (hash_size is not None and len(root) != hash_size):
        raise NoteError("malformed checkpoint: bad root hash length")
    if any(not line for line in extensions):
        raise NoteError("malformed checkpoint: empty extension line")
    return Checkpoint(name, size, root, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> str:
    """The signed note of ``cp``. The log's key name should equal its origin."""
    return signer.sign(format_checkpoint(cp))


def verify_checkpoint(
    note: str | bytes, log_key: NoteVerifier, *, origin: str | None = None
) -> Checkpoint:
    """A checkpoint signed by ``log_key`` (other signatures, e.g. witnesses, are ignored).

    Stops: a checkpoint forged or altered by anyone without the log key (signature), and a
    checkpoint of another log replayed as this one (``origin``, default the key's name).
    """
    opened = open_note(note, [log_key])
    return parse_checkpoint(opened.text, origin=origin if origin is not None else log_key.name)
