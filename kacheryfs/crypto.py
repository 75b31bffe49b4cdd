"""Keys and the exact bytes that get signed, MACed and encrypted. The only module importing nacl.

- Node keys: ed25519; a node id is the public key in hex.
- Session keys: ephemeral X25519 per connection, BLAKE2b key derivation over the transcript.
- Frames: AEGIS-256 (libsodium; ~6 GB/s here with AES instructions, against ~1.3 GB/s for
  ChaCha20-Poly1305), with a per-direction counter as the nonce, so frames cannot be replayed,
  dropped or reordered without the next decryption failing.
- Channels: a channel key derived from its name (and secret, for a private channel); peers prove
  knowledge of it with a keyed MAC over the session transcript, so it never travels.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing
from nacl._sodium import ffi as _ffi, lib as _lib

from .errors import CryptoError, KacheryError

HANDSHAKE_DOMAIN = b"kacheryfs/handshake/v1"
CHANNEL_KEY_DOMAIN = b"kacheryfs/channel-key/v1"
CHANNEL_ID_DOMAIN = b"kacheryfs/channel-id/v1"
CHANNEL_PROOF_DOMAIN = b"kacheryfs/channel-proof/v1"
SESSION_KEY_DOMAIN = b"kacheryfs/session-keys/v1"
DHT_CHANNEL_DOMAIN = b"kacheryfs/dht-channel/v1"
DHT_OBJECT_DOMAIN = b"kacheryfs/dht-object/v1"
AEAD_KEY_BYTES = 32
AEAD_TAG_BYTES = 32
AEAD_NONCE_BYTES = 32
NODE_KEY_FILE = "node-key.ed25519"


def blake2b(data: bytes, *, key: bytes = b"", size: int = 32) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=size).digest()


def _tagged(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: no two different part lists give the same bytes."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


# ---- node identity ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeKey:
    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> "NodeKey":
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def load_or_create(cls, config_dir: Path) -> "NodeKey":
        """The node key in the config dir (mode 0600, dir 0700), created on first start."""
        config_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config_dir, 0o700)
        path = config_dir / NODE_KEY_FILE
        try:
            seed = bytes.fromhex(path.read_text().strip())
            if len(seed) != 32:
                raise ValueError("wrong length")
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return cls(nacl.signing.SigningKey(seed))
        except FileNotFoundError:
            key = cls.generate()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(bytes(key.signing_key).hex() + "\n")
            return key
        except ValueError as exc:
            raise KacheryError(f"node key file {path} is corrupt ({exc}); move it away to make a new identity") from None

    @property
    def public(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def node_id(self) -> str:
        return self.public.hex()

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature


def verify_signature(public: bytes, message: bytes, signature: bytes) -> None:
    try:
        nacl.signing.VerifyKey(public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        raise CryptoError("bad signature") from None



# ---- feed keys -------------------------------------------------------------------------------
# A feed is an ed25519 key pair; the feed id is the public key in hex. Which bytes a feed key signs
# is defined in one place, kacheryfs/feeds/entry.py (signed_bytes); this is only the key material.
FEED_KEY_SUFFIX = ".key"


@dataclass(frozen=True)
class FeedKey:
    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> "FeedKey":
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "FeedKey":
        if len(seed) != 32:
            raise CryptoError("a feed key seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def load(cls, path: Path) -> "FeedKey":
        """Read a key file written by save(); its contents must match the feed id in its name."""
        try:
            seed = bytes.fromhex(path.read_text().strip())
            key = cls.from_seed(seed)
        except (ValueError, CryptoError) as exc:
            raise KacheryError(f"feed key file {path} is corrupt ({exc})") from None
        if path.name.endswith(FEED_KEY_SUFFIX) and path.name[: -len(FEED_KEY_SUFFIX)] != key.feed_id:
            raise KacheryError(f"feed key file {path} holds the key of another feed ({key.feed_id})")
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return key

    def save(self, key_dir: Path) -> Path:
        """Write <key_dir>/<feed id>.key (mode 0600, dir 0700) durably: temp file, fsync, rename,
        fsync dir; so a crash never leaves an empty or partial key file under the final name."""
        key_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(key_dir, 0o700)
        path = key_dir / (self.feed_id + FEED_KEY_SUFFIX)
        tmp = key_dir / f".{self.feed_id}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(bytes(self.signing_key).hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(key_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    @property
    def public(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def feed_id(self) -> str:
        return self.public.hex()

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature


# ---- session key agreement -------------------------------------------------------------------
@dataclass(frozen=True)
class Ephemeral:
    secret: bytes
    public: bytes

    @classmethod
    def generate(cls) -> "Ephemeral":
        secret = os.urandom(32)
        return cls(secret, sodium.crypto_scalarmult_base(secret))

    def shared(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 32:
            raise CryptoError("bad ephemeral key length")
        try:
            out = sodium.crypto_scalarmult(self.secret, peer_public)
        except Exception:
            raise CryptoError("bad ephemeral key") from None
        if out == bytes(32):  # a low-order point: reject (contributory behaviour)
            raise CryptoError("degenerate ephemeral key")
        return out


def transcript_hash(initiator_eph: bytes, responder_eph: bytes) -> bytes:
    return blake2b(_tagged(HANDSHAKE_DOMAIN, initiator_eph, responder_eph))


def session_keys(shared: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """(initiator->responder key, responder->initiator key)."""
    okm = blake2b(_tagged(SESSION_KEY_DOMAIN, transcript), key=shared, size=64)
    return okm[:32], okm[32:]


def auth_message(transcript: bytes, role: bytes, node_public: bytes) -> bytes:
    """What a node signs to prove it holds its key in this session: the transcript, its role, its id."""
    return _tagged(HANDSHAKE_DOMAIN, b"auth", transcript, role, node_public)


# ---- channels --------------------------------------------------------------------------------
def channel_key(name: str, secret: bytes | None = None) -> bytes:
    """Open channel: known by its name. Private channel: by name and secret."""
    return blake2b(_tagged(CHANNEL_KEY_DOMAIN, name.encode(), secret or b""))


def channel_id(key: bytes) -> str:
    """What the bootstrap sees: a hash that reveals neither name nor key."""
    return blake2b(_tagged(CHANNEL_ID_DOMAIN), key=key, size=16).hex()


def channel_proof(key: bytes, transcript: bytes, role: bytes, node_public: bytes) -> bytes:
    """A MAC only holders of the channel key can make, valid only for this session and sender."""
    return blake2b(_tagged(CHANNEL_PROOF_DOMAIN, transcript, role, node_public), key=key, size=32)


DHT_EPOCH_SECONDS = 6 * 3600  # DHT keys rotate this often (net/dht_discovery.py, docs/security.md)


def dht_epoch(now: float, period: float = DHT_EPOCH_SECONDS) -> int:
    """The time bucket a DHT key of ``now`` (Unix seconds) belongs to."""
    return int(now // period)


def _epoch_part(epoch: int | None) -> tuple[bytes, ...]:
    return () if epoch is None else (epoch.to_bytes(8, "big", signed=True),)


def dht_channel_infohash(key: bytes, epoch: int | None = None) -> bytes:
    """The 20-byte mainline DHT key (a BEP 5 info-hash) under which a channel's members announce
    themselves: a MAC under the channel key, so only members can compute it (for a private channel
    that needs the secret), and it is unrelated to the channel id a bootstrap sees. With ``epoch``
    (dht_epoch), a different key in every time bucket: an observer cannot link a channel's keys
    across buckets, nor watch one key for ever."""
    return blake2b(_tagged(DHT_CHANNEL_DOMAIN, *_epoch_part(epoch)), key=key, size=20)


def dht_object_infohash(key: bytes, sha1: str, epoch: int | None = None) -> bytes:
    """The DHT key under which providers of one object announce themselves in one channel."""
    return blake2b(_tagged(DHT_OBJECT_DOMAIN, bytes.fromhex(sha1), *_epoch_part(epoch)), key=key, size=20)


# ---- frame encryption ------------------------------------------------------------------------
class FrameCipher:
    """One direction of a session: AEGIS-256 with a counter nonce.

    ``seal_frame``/``open_frame`` call libsodium on caller-visible buffers: pynacl's wrappers
    zero a fresh output buffer and copy the result again, three extra passes over every 1 MiB
    chunk that showed up in profiles of bulk transfers."""

    def __init__(self, key: bytes):
        if len(key) != AEAD_KEY_BYTES:
            raise ValueError("key must be 32 bytes")
        self._key = key
        self._counter = 0

    def _nonce(self) -> bytes:
        nonce = self._counter.to_bytes(AEAD_NONCE_BYTES, "little")
        self._counter += 1
        return nonce

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        return sodium.crypto_aead_aegis256_encrypt(plaintext, aad, self._nonce(), self._key)

    def decrypt(self, ciphertext: bytes, aad: bytes = b"") -> bytes:
        try:
            return sodium.crypto_aead_aegis256_decrypt(ciphertext, aad, self._nonce(), self._key)
        except Exception:
            raise CryptoError("frame failed authentication") from None

    def seal_frame(self, plaintext) -> bytearray:
        """u32 big-endian ciphertext length | ciphertext, the length bytes as associated data."""
        n = len(plaintext)
        length = n + AEAD_TAG_BYTES
        frame = bytearray(4 + length)
        frame[:4] = length.to_bytes(4, "big")
        out = _ffi.from_buffer(frame)
        res = _lib.crypto_aead_aegis256_encrypt(
            out + 4, _ffi.NULL, _ffi.from_buffer(plaintext), n, bytes(frame[:4]), 4, _ffi.NULL,
            self._nonce(), self._key)
        if res != 0:
            raise CryptoError("encryption failed")
        return frame

    def seal_in_place(self, frame: bytearray) -> bytearray:
        """``frame`` is 4 bytes of room, the plaintext, then AEAD_TAG_BYTES of room: write the
        length, and encrypt the plaintext where it lies (the tag fills the room at the end). The
        sending side of a chunk then reads it from disk into the buffer it is sent from."""
        n = len(frame) - 4 - AEAD_TAG_BYTES
        if n < 0:
            raise ValueError("frame too short for its header and tag")
        frame[:4] = (n + AEAD_TAG_BYTES).to_bytes(4, "big")
        buf = _ffi.from_buffer(frame)
        res = _lib.crypto_aead_aegis256_encrypt(
            buf + 4, _ffi.NULL, buf + 4, n, bytes(frame[:4]), 4, _ffi.NULL, self._nonce(), self._key)
        if res != 0:
            raise CryptoError("encryption failed")
        return frame

    def open_frame_in_place(self, header: bytes, frame: bytearray) -> memoryview:
        """Decrypt ``frame`` (a whole ciphertext, tag included) where it lies: the plaintext is the
        returned view of its start. Saves the second 1 MiB buffer a chunk would need (libsodium's
        AEGIS accepts the same pointer for input and output)."""
        n = len(frame) - AEAD_TAG_BYTES
        if n < 0:
            raise CryptoError("frame shorter than its tag")
        buf = _ffi.from_buffer(frame)
        res = _lib.crypto_aead_aegis256_decrypt(
            buf, _ffi.NULL, _ffi.NULL, buf, len(frame), header, len(header), self._nonce(), self._key)
        if res != 0:
            raise CryptoError("frame failed authentication")
        return memoryview(frame)[:n]

    def open_frame(self, header: bytes, ciphertext) -> bytearray:
        """The plaintext of one frame; raises CryptoError if it fails authentication."""
        n = len(ciphertext) - AEAD_TAG_BYTES
        if n < 0:
            raise CryptoError("frame shorter than its tag")
        plaintext = bytearray(n)
        res = _lib.crypto_aead_aegis256_decrypt(
            _ffi.from_buffer(plaintext), _ffi.NULL, _ffi.NULL, _ffi.from_buffer(ciphertext), len(ciphertext),
            header, len(header), self._nonce(), self._key)
        if res != 0:
            raise CryptoError("frame failed authentication")
        return plaintext
