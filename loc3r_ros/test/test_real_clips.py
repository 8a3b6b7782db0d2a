"""The real-clip command's package handling, on a .deb built here (no download in tests)."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from loc3r.eval.real_clips import CLIPS, ar_members, extract_clips


def ar_archive(members: dict[str, bytes]) -> bytes:
    """An `ar` archive as dpkg writes one."""
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n"
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def fake_deb(contents: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for member, payload in contents.items():
            info = tarfile.TarInfo("./" + member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": b"x",
                       "data.tar.xz": data.getvalue()})  # fmt: skip


def test_clips_are_extracted_from_the_package_and_gunzipped(tmp_path):
    contents = {member: f"clip {name}".encode() for name, member in CLIPS.items()}
    for name, member in CLIPS.items():
        if member.endswith(".gz"):
            contents[member] = gzip.compress(f"clip {name}".encode())
    contents["usr/share/doc/opencv-doc/other.txt"] = b"not a clip"
    paths = extract_clips(fake_deb(contents), tmp_path / "clips")
    assert set(paths) == set(CLIPS)
    for name, path in paths.items():
        assert path.read_bytes() == f"clip {name}".encode()  # .mp4.gz arrive as .mp4
    assert not (tmp_path / "clips" / "other.txt").exists()


def test_a_package_without_the_clips_or_not_a_deb_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        extract_clips(fake_deb({"usr/share/doc/readme": b"x"}), tmp_path)
    with pytest.raises(ValueError, match="not an ar archive"):
        extract_clips(b"PK\x03\x04 a zip file", tmp_path)
    assert set(ar_members(ar_archive({"a": b"odd", "b": b"even"}))) == {"a", "b"}
