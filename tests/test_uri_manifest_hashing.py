"""Pure tests: URI parsing, manifests, one-pass hashing."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kacheryfs.errors import CorruptObject, InvalidURI
from kacheryfs.store import CHUNK_SIZE, ContentHasher, Manifest, format_uri, hash_bytes, parse_uri

H1 = "a" * 40
H2 = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("text,sha1,name,manifest", [
    (f"sha1://{H1}", H1, "", None),
    (f"sha1://{H1}/", H1, "", None),
    (f"sha1://{H1}/data.npy", H1, "data.npy", None),
    (f"sha1://{H1}/dir/data.npy?manifest={H2}", H1, "dir/data.npy", H2),
    (f"sha1://{H1}?manifest={H2}", H1, "", H2),
    (f"sha1://{H1}/with%20space.txt", H1, "with space.txt", None),
    (H1, H1, "", None),
    (f"  sha1://{H1}/x \n", H1, "x", None),
    # any case names the same bytes; kept lower-case (a user pasting SHA1://ABC... is not refused)
    (f"SHA1://{H2.upper()}/Data.NPY?manifest={H1.upper()}", H2, "Data.NPY", H1),
    (H2.upper(), H2, "", None),
])
def test_parse_valid(text, sha1, name, manifest):
    uri = parse_uri(text)
    assert (uri.sha1, uri.name, uri.manifest_sha1) == (sha1, name, manifest)


@pytest.mark.parametrize("text", [
    "", "sha1://", "sha1://abc", f"sha256://{H1}", f"http://{H1}", f"sha1dir://{H1}/x",
    f"sha1://{H1}?manifest=xyz", f"sha1://{H1}?manifest={H2}&manifest={H2}", f"sha1://{H1}?foo=1",
    f"sha1://{H1[:-1]}g/x", "a" * 39, None, 42,
])
def test_parse_invalid(text):
    with pytest.raises(InvalidURI) as info:
        parse_uri(text)
    # the message shows every accepted form: a file URI, a directory URI, a bare hash
    assert "sha1://<40 hex>" in str(info.value) and "sha1dir://" in str(info.value)
    assert "bare 40-hex hash" in str(info.value)


@given(name=st.text(alphabet=st.characters(blacklist_characters="\0?#", blacklist_categories=("Cs",)), max_size=40),
       manifest=st.none() | st.just(H2))
def test_format_parse_roundtrip(name, manifest):
    name = name.strip("/ \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0")
    uri = parse_uri(format_uri(H1, name, manifest))
    assert uri.sha1 == H1 and uri.manifest_sha1 == manifest
    assert uri.name == name


@settings(max_examples=50)
@given(data=st.binary(max_size=3 * 1024), splits=st.lists(st.integers(0, 3 * 1024), max_size=8),
       chunk=st.sampled_from([1, 7, 64, 1024]))
def test_hasher_independent_of_write_boundaries(data, splits, chunk):
    hasher = ContentHasher(chunk_size=chunk)
    cuts = sorted({0, len(data), *[s for s in splits if s <= len(data)]})
    for a, b in zip(cuts, cuts[1:]):
        hasher.update(data[a:b])
    digest = hasher.digest()
    assert digest.sha1 == hashlib.sha1(data).hexdigest()
    assert digest.size == len(data)
    expected_chunks = [hashlib.sha1(data[i:i + chunk]).hexdigest() for i in range(0, len(data), chunk)] or \
        [hashlib.sha1(b"").hexdigest()]
    assert list(digest.chunk_sha1s) == expected_chunks


def test_exact_chunk_boundaries():
    assert len(hash_bytes(b"").chunk_sha1s) == 1
    assert len(hash_bytes(b"x" * CHUNK_SIZE).chunk_sha1s) == 1
    assert len(hash_bytes(b"x" * (CHUNK_SIZE + 1)).chunk_sha1s) == 2


def _manifest(size=10, chunk=4) -> Manifest:
    data = bytes(range(size))
    h = ContentHasher(chunk)
    h.update(data)
    return Manifest.from_digest(h.digest())


def test_manifest_roundtrip_and_hash():
    m = _manifest()
    raw = m.to_bytes()
    assert Manifest.from_bytes(raw, m.manifest_sha1) == m
    assert raw == _manifest().to_bytes()  # canonical: same file, same manifest bytes
    assert m.chunk_range(2) == (8, 10)
    assert list(m.chunks_covering(3, 2)) == [0, 1]
    assert list(m.chunks_covering(0, 0)) == []
    assert list(m.chunks_covering(9, 100)) == [2]
    assert list(m.chunks_covering(10, 1)) == []


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("chunks"),
    lambda d: d.update(version=2),
    lambda d: d.update(size=-1),
    lambda d: d.update(chunk_size=0),
    lambda d: d.update(size=100),  # chunk count no longer matches
    lambda d: d["chunks"].__setitem__(0, "zz"),
    lambda d: d.update(sha1="nothex"),
])
def test_manifest_rejects_malformed(mutate):
    import json

    doc = json.loads(_manifest().to_bytes())
    mutate(doc)
    with pytest.raises(CorruptObject):
        Manifest.from_bytes(json.dumps(doc).encode())


def test_manifest_rejects_wrong_hash_and_garbage():
    m = _manifest()
    with pytest.raises(CorruptObject):
        Manifest.from_bytes(m.to_bytes(), "0" * 40)
    with pytest.raises(CorruptObject):
        Manifest.from_bytes(b"\xff\x00not json")


# ---- directory manifests and sha1dir:// URIs -------------------------------------------------------
from kacheryfs.errors import NotADirectoryManifest, NotFound  # noqa: E402
from kacheryfs.store import Directory, FileEntry, build_directory, format_dir_uri, parse_dir_uri  # noqa: E402

F1, F2 = FileEntry(H1, 3), FileEntry(H2, 5 << 20, "b" * 40)


def test_directory_manifest_roundtrip_and_lookup():
    d = build_directory({"a.txt": F1, "sub/deep/big.bin": F2}, dirs=["empty", "sub"])
    data = d.to_bytes()
    # the seed's layout: nested {"dirs", "files"}; a file's "sha1" and "size" (+ our "manifest")
    doc = __import__("json").loads(data)
    assert doc["files"]["a.txt"] == {"sha1": H1, "size": 3}
    assert doc["dirs"]["sub"]["dirs"]["deep"]["files"]["big.bin"] == {"sha1": H2, "size": 5 << 20, "manifest": "b" * 40}
    assert doc["dirs"]["empty"] == {"dirs": {}, "files": {}}
    assert Directory.from_bytes(data) == d
    # canonical: the same tree always has the same bytes, whatever order it was built in
    assert build_directory({"sub/deep/big.bin": F2, "a.txt": F1}, dirs=["sub", "empty"]).to_bytes() == data
    assert d.lookup("sub/deep/big.bin") == F2 and d.lookup("/sub/deep/") == d.dirs["sub"].dirs["deep"]
    assert d.lookup("") is d
    assert d.total() == (2, 3 + (5 << 20))
    assert [p for p, _e in d.walk()] == ["empty", "sub", "sub/deep", "sub/deep/big.bin", "a.txt"]
    for missing in ("nope", "a.txt/x", "sub/../a.txt"):
        with pytest.raises(NotFound):
            d.lookup(missing)
    listing = d.listing(recursive=False)
    assert listing == {"files": {"a.txt": {"sha1": H1, "size": 3}}, "dirs": {"empty": {}, "sub": {}}}


@pytest.mark.parametrize("data", [
    b"", b"[]", b"not json", b'{"files": {}}', b'{"dirs": [], "files": {}}',
    b'{"dirs": {}, "files": {"a": {"sha1": "xyz", "size": 1}}}',
    b'{"dirs": {}, "files": {"a": {"sha1": "' + H1.encode() + b'", "size": -1}}}',
    b'{"dirs": {}, "files": {"a": {"sha1": "' + H1.encode() + b'", "size": true}}}',
    b'{"dirs": {}, "files": {"../x": {"sha1": "' + H1.encode() + b'", "size": 1}}}',
    b'{"dirs": {"a/b": {"dirs": {}, "files": {}}}, "files": {}}',
    b'{"dirs": {"a": {"dirs": {}, "files": {}}}, "files": {"a": {"sha1": "' + H1.encode() + b'", "size": 1}}}',
    b'{"dirs": {"x": ' * 300 + b'{"dirs": {}, "files": {}}' + b'}, "files": {}}' * 300,
    b"[" * 100000,
])
def test_malformed_directory_manifests_are_refused(data):
    with pytest.raises(NotADirectoryManifest) as info:
        Directory.from_bytes(data)
    assert info.value.errno == __import__("errno").ENOTDIR


def test_directory_manifest_tolerates_the_seeds_extra_keys():
    seed = b'{"files": {"a.txt": {"size": 3, "sha1": "' + H1.encode() + b'", "md5": "x"}}, "dirs": {}, "x": 1}'
    assert Directory.from_bytes(seed).files == {"a.txt": FileEntry(H1, 3)}


@pytest.mark.parametrize("text,label,path", [
    (f"sha1dir://{H1}", "", ""),
    (f"sha1dir://{H1}.proj", "proj", ""),
    (f"sha1dir://{H1}.proj/sub/x.txt", "proj", "sub/x.txt"),
    (f"SHA1DIR://{H1.upper()}/sub/", "", "sub"),
    (f"sha1dir://{H1}.my%20proj/a%20b/c", "my proj", "a b/c"),
])
def test_dir_uris(text, label, path):
    uri = parse_dir_uri(text)
    assert (uri.sha1, uri.label, uri.path) == (H1, label, path)
    assert parse_dir_uri(str(uri)) == uri
    assert format_dir_uri(H1, label, path) == str(uri)


@pytest.mark.parametrize("text", [f"sha1://{H1}", "sha1dir://abc", f"sha1dir://{H1}/a/../b", "sha1dir://"])
def test_bad_dir_uris(text):
    with pytest.raises(InvalidURI):
        parse_dir_uri(text)
