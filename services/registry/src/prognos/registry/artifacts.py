"""The content-addressed artifact store: model files and uploads, named by their SHA-256.

A blob lives at ``<root>/sha256/<first two hex digits>/<hex digest>``, the layout of an
S3-compatible bucket with the same keys, so another ``ArtifactStore`` can take the local
directory's place without changing a stored hash. Blobs never change once written: a write
goes to a temporary file first and is renamed into place, and the same bytes stored twice
are stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
_BLOCK = 1 << 20


class ArtifactNotFoundError(LookupError):
    """No blob with this content hash is stored."""

    def __init__(self, content_hash: str) -> None:
        super().__init__(f"no artifact {content_hash} in the store")
        self.content_hash = content_hash


class ArtifactMismatchError(ValueError):
    """Bytes do not match the size or hash they were announced with."""


@dataclass(frozen=True)
class StoredBlob:
    """Where a blob is, and what it is."""

    content_hash: str
    size_bytes: int
    uri: str


def parse_hash(content_hash: str) -> str:
    """The hex digest of ``sha256:<hex>``.

    Raises:
        ArtifactMismatchError: not of that form.
    """
    match = _HASH.match(content_hash)
    if match is None:
        raise ArtifactMismatchError(f"not a content hash: {content_hash!r} (want sha256:<hex>)")
    return match.group(1)


class ArtifactStore(Protocol):
    """What the registry needs of a blob store; the local directory is one implementation."""

    def uri_of(self, content_hash: str) -> str:
        """The URI the blob of ``content_hash`` is read from."""
        ...

    async def put_file(self, path: Path) -> StoredBlob:
        """Store a file's bytes."""
        ...

    async def put_stream(
        self, chunks: AsyncIterator[bytes], *, size_bytes: int = 0, content_hash: str = ""
    ) -> StoredBlob:
        """Store bytes as they arrive, checking the announced size and hash if given."""
        ...

    async def stat(self, content_hash: str) -> StoredBlob:
        """The stored blob of ``content_hash``; raises ``ArtifactNotFoundError``."""
        ...

    async def fetch(self, content_hash: str, destination: Path) -> Path:
        """Make the blob available as a local file at ``destination``, verified."""
        ...


class LocalArtifactStore:
    """An ``ArtifactStore`` in a local directory (the default, under the data directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path_of(self, content_hash: str) -> Path:
        digest = parse_hash(content_hash)
        return self.root / "sha256" / digest[:2] / digest

    def uri_of(self, content_hash: str) -> str:
        return self.path_of(content_hash).as_uri()

    async def put_file(self, path: Path) -> StoredBlob:
        return await asyncio.to_thread(self._put_file, Path(path))

    def _put_file(self, path: Path) -> StoredBlob:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
        content_hash = f"sha256:{digest.hexdigest()}"
        target = self.path_of(content_hash)
        if not target.exists():
            partial = self._partial()
            shutil.copyfile(path, partial)
            self._seal(partial, target)
        return StoredBlob(content_hash, target.stat().st_size, target.as_uri())

    async def put_stream(
        self, chunks: AsyncIterator[bytes], *, size_bytes: int = 0, content_hash: str = ""
    ) -> StoredBlob:
        if content_hash:
            parse_hash(content_hash)
        partial = self._partial()
        digest = hashlib.sha256()
        size = 0
        try:
            handle = await asyncio.to_thread(partial.open, "wb")
            try:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(handle.write, chunk)
            finally:
                await asyncio.to_thread(handle.close)
            got = f"sha256:{digest.hexdigest()}"
            if size_bytes and size != size_bytes:
                raise ArtifactMismatchError(f"announced {size_bytes} bytes, received {size}")
            if content_hash and got != content_hash:
                raise ArtifactMismatchError(f"announced {content_hash}, received {got}")
            target = self.path_of(got)
            if target.exists():
                partial.unlink()
            else:
                await asyncio.to_thread(self._seal, partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return StoredBlob(got, size, target.as_uri())

    async def stat(self, content_hash: str) -> StoredBlob:
        target = self.path_of(content_hash)
        try:
            size = target.stat().st_size
        except FileNotFoundError:
            raise ArtifactNotFoundError(content_hash) from None
        return StoredBlob(content_hash, size, target.as_uri())

    async def fetch(self, content_hash: str, destination: Path) -> Path:
        return await asyncio.to_thread(self._fetch, content_hash, Path(destination))

    def _fetch(self, content_hash: str, destination: Path) -> Path:
        source = self.path_of(content_hash)
        if not source.exists():
            raise ArtifactNotFoundError(content_hash)
        if sha256_of(source) != content_hash:
            raise ArtifactMismatchError(f"the stored blob {content_hash} no longer matches it")
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, destination)  # blobs are read-only, so sharing the inode is safe
        except OSError:
            shutil.copyfile(source, destination)
        return destination

    def _partial(self) -> Path:
        incoming = self.root / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        return incoming / f"{uuid.uuid4().hex}.partial"

    @staticmethod
    def _seal(partial: Path, target: Path) -> None:
        partial.chmod(0o444)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)


def local_path(uri: str) -> Path:
    """The path of a ``file://`` URI.

    Raises:
        ValueError: another scheme.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ValueError(f"not a local file URI: {uri}")
    return Path(unquote(parsed.path))


def sha256_of(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def pack_directory(directory: Path, archive: Path) -> Path:
    """Write ``directory`` as an uncompressed tar whose bytes depend only on the files.

    Entries are sorted, with owner, group and times zeroed, so the same tree always has the
    same content hash.
    """
    root = Path(directory)
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return archive


def unpack_directory(archive: Path, directory: Path) -> Path:
    """Extract a tar written by ``pack_directory`` (members may not leave ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r") as tar:
        tar.extractall(directory, filter="data")
    return directory


async def iter_bytes(data: bytes, chunk: int = _BLOCK) -> AsyncIterator[bytes]:
    """Bytes in memory as the chunk stream ``put_stream`` takes."""
    view = io.BytesIO(data)
    while block := view.read(chunk):
        yield block
