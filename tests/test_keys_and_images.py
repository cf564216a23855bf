"""Issue 8 ("nothing lost, nothing mixed"): sample keys that are always valid and distinct, shard readers
that refuse members which cannot be keys, and very large images scaled down at shard time."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from zmdist.data.images import fit_size, read_rgb
from zmdist.data.reader import iter_shard, shard_keys
from zmdist.data.shards import write_shards
from zmdist.data.sources import make_keys, open_source

KEY = re.compile(r"[A-Za-z0-9_-]+")


def _png_bytes(size=(4, 4), colour=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _all_keys(out: Path) -> list[str]:
    return [key for tar in sorted(out.glob("*.tar")) for key in shard_keys(tar)]


# --- 1a. readers refuse members that are not flat KEY.EXT files ------------------------------------------

def _tar_with(path: Path, name: str, kind: bytes = tarfile.REGTYPE) -> None:
    data = _png_bytes()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        good = tarfile.TarInfo("good.png")
        good.size = len(data)
        tar.addfile(good, io.BytesIO(data))
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name, kind, why", [
    ("../x.png", tarfile.REGTYPE, "path component"),
    ("/abs/x.png", tarfile.REGTYPE, "path component"),
    ("sub/x.png", tarfile.REGTYPE, "path component"),
    ("bad key!.png", tarfile.REGTYPE, "is not made of [A-Za-z0-9_-]"),
    ("caf\u00e9.png", tarfile.REGTYPE, "is not made of [A-Za-z0-9_-]"),
    ("link.png", tarfile.SYMTYPE, "not a regular file"),
])
def test_readers_refuse_members_that_are_not_valid_keys(tmp_path, name, kind, why):
    """Before: ``../x`` or ``/abs/x`` came back as keys (could clash, or escape a folder when used as a path)."""
    path = tmp_path / "train-000000.tar"
    _tar_with(path, name, kind)
    readers = (lambda: list(iter_shard(path)), lambda: shard_keys(path), lambda: list(iter_shard(path, positions=[0])))
    for read in readers:
        with pytest.raises(ValueError) as err:
            read()
        message = str(err.value)
        assert str(path) in message and repr(name) in message and why in message


# --- 1b. keys at shard time: collisions, non-UTF-8 names, stability ------------------------------------

def test_make_keys_resolves_second_level_collisions_independent_of_order():
    """Before: a file literally named like another's hashed key made ``make_keys`` raise ("rename one")."""
    first = make_keys(["a.b.png", "a_b.png"])
    paths = ["a.b.png", "a_b.png", f"{first[0]}.png", "c/d.png", "c__d.png"]
    keys = make_keys(paths)
    assert len(set(keys)) == len(keys) and all(KEY.fullmatch(k) for k in keys)
    assert make_keys(paths[::-1]) == keys[::-1]
    assert make_keys(["cat/001.jpg", "a.b.png"]) == ["cat__001", "a_b"]  # unchanged for clean names
    assert make_keys(["a.b.png", "a_b.png"]) == first  # and for first-level clashes (existing sets keep keys)


def test_make_keys_non_utf8_names_get_valid_distinct_keys():
    """Before: hashing a surrogate-escaped name crashed with "'utf-8' codec can't encode character"."""
    paths = [os.fsdecode(b"\xff.png"), os.fsdecode(b"\xfe.png"), "_.png", os.fsdecode(b"cat/\xff\xfe.jpg")]
    keys = make_keys(paths)
    assert len(set(keys)) == len(keys) and all(KEY.fullmatch(k) for k in keys)
    assert make_keys(paths[::-1]) == keys[::-1]


def test_make_keys_equal_relative_paths_are_told_apart_by_ids():
    keys = make_keys(["a/b.png", "a/b.png"], ids=["/x/a/b.png", "/x/a\\b.png"])
    assert keys[0] != keys[1] and all(KEY.fullmatch(k) for k in keys)
    with pytest.raises(ValueError, match="cannot be given distinct sample keys"):
        make_keys(["a.png", "a.png"])


def _make_non_utf8_folder(root: Path) -> None:
    cat = os.fsencode(root / "cat")
    os.makedirs(cat)
    try:
        for name in (b"\xff.png", b"\xfe.png", b"_.png", b"a.b.png", b"a_b.png"):
            with open(os.path.join(cat, name), "wb") as fh:
                fh.write(_png_bytes())
        with open(os.path.join(cat, b"notes\xff.txt"), "wb") as fh:
            fh.write(b"x")
    except OSError as err:  # a file system that only takes UTF-8 names (macOS APFS)
        pytest.skip(f"file system refuses non-UTF-8 names: {err}")


def test_imagefolder_with_non_utf8_and_colliding_names_shards_stably(tmp_path):
    """Before: the shard stage crashed with "'utf-8' codec can't encode character '\\udcff'", naming no file."""
    _make_non_utf8_folder(tmp_path / "src")
    spec = f"imagefolder:{tmp_path / 'src'}"
    manifest = write_shards(spec, tmp_path / "out", progress=False)
    assert manifest.splits["train"].total == 5
    text = (tmp_path / "out" / "manifest.json").read_bytes().decode("utf-8")  # strict UTF-8, valid JSON
    skipped = json.loads(text)["skipped"]
    assert [s["origin"].endswith("notes\\xff.txt") for s in skipped] == [True]
    keys = _all_keys(tmp_path / "out")
    assert len(set(keys)) == 5 and all(KEY.fullmatch(k) for k in keys)
    origins = [json.loads(s["json"].decode("utf-8"))["origin"] for s in _tar_records(tmp_path / "out")]
    assert any(o.endswith("cat/\\xff.png") for o in origins)
    write_shards(spec, tmp_path / "again", progress=False)
    assert _all_keys(tmp_path / "again") == keys  # same input, same keys (and same order)
    assert sorted(s.key for s in open_source(spec).samples["train"]) == sorted(keys)


def _tar_records(out: Path) -> list[dict]:
    records = []
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    records.append({"json": tar.extractfile(member).read()})
    return records


def test_csv_paths_that_clean_up_to_the_same_key_get_distinct_keys(tmp_path):
    """``a\\b.png`` (a file name with a backslash) and ``a/b.png`` give the same relative path after the
    CSV's backslash clean-up. Before: ``make_keys`` raised; now both are sharded under distinct keys."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.png").write_bytes(_png_bytes())
    try:
        (tmp_path / "a\\b.png").write_bytes(_png_bytes(colour=(200, 0, 0)))
    except OSError:
        pytest.skip("file system refuses backslashes in names")
    (tmp_path / "list.csv").write_text("path,label\na/b.png,x\na\\b.png,y\n")
    write_shards(f"csv:{tmp_path / 'list.csv'}", tmp_path / "out", progress=False)
    keys = _all_keys(tmp_path / "out")
    assert len(keys) == 2 and len(set(keys)) == 2 and all(KEY.fullmatch(k) for k in keys)
    write_shards(f"csv:{tmp_path / 'list.csv'}", tmp_path / "again", progress=False)
    assert _all_keys(tmp_path / "again") == keys


# --- 2. very large images are down-scaled at shard time -------------------------------------------------

def test_fit_size_keeps_aspect_and_the_pixel_budget():
    for size, budget in [((12000, 12000), 16_000_000), ((9000, 3000), 1_000_000), ((100_000, 1), 1000), ((7, 3), 5)]:
        w, h = fit_size(size, budget)
        assert w * h <= budget and w >= 1 and h >= 1
        if min(w, h) > 10:
            assert abs(w / h - size[0] / size[1]) < 0.01


def test_144_megapixel_png_is_downscaled_and_counted(tmp_path):
    """Before: a 12000x12000 image went into the shard at full size (432 MB per decode in every later stage)."""
    folder = tmp_path / "src" / "big"
    folder.mkdir(parents=True)
    Image.new("L", (12000, 12000), 77).save(folder / "huge.png", optimize=False, compress_level=1)
    (tmp_path / "src" / "small").mkdir()
    (tmp_path / "src" / "small" / "s.png").write_bytes(_png_bytes())
    started = time.monotonic()
    manifest = write_shards(f"imagefolder:{tmp_path / 'src'}", tmp_path / "out", progress=False)
    assert time.monotonic() - started < 60
    sizes = {s["key"]: s["image"].size for s in iter_shard(tmp_path / "out" / "train-000000.tar")}
    assert sizes == {"big__huge": (4000, 4000), "small__s": (4, 4)}  # default max_pixels = 16 Mpx
    assert any("1 image(s) over max_pixels=16000000" in w and "largest original 12000x12000" in w
               for w in manifest.warnings)
    assert manifest.converted == {"L->RGB": 1}


def test_max_pixels_option_jpeg_draft_and_aspect_ratio(tmp_path):
    folder = tmp_path / "src" / "c"
    folder.mkdir(parents=True)
    Image.new("RGB", (800, 400), (0, 128, 255)).save(folder / "wide.jpg", quality=90)
    Image.new("RGB", (300, 900), (9, 9, 9)).save(folder / "tall.png")
    Image.new("RGB", (100, 100), (9, 9, 9)).save(folder / "ok.png")
    decoded = read_rgb(folder / "wide.jpg", max_pixels=20_000)
    assert decoded.image.size == (200, 100) and decoded.original_size == (800, 400)
    assert read_rgb(folder / "ok.png", max_pixels=20_000).original_size is None
    manifest = write_shards(f"imagefolder:{tmp_path / 'src'}", tmp_path / "out", progress=False, max_pixels=20_000)
    sizes = {s["key"]: s["image"].size for s in iter_shard(tmp_path / "out" / "train-000000.tar")}
    assert sizes == {"c__wide": (200, 100), "c__tall": (81, 244), "c__ok": (100, 100)}
    assert any("2 image(s) over max_pixels=20000" in w and "largest original 800x400" in w for w in manifest.warnings)
    plain = write_shards(f"imagefolder:{tmp_path / 'src'}", tmp_path / "plain", progress=False, max_pixels=0)
    assert not plain.warnings
    plain_sizes = {s["image"].size for s in iter_shard(tmp_path / "plain" / "train-000000.tar")}
    assert plain_sizes == {(800, 400), (300, 900), (100, 100)}
    with pytest.raises(ValueError, match="max_pixels must be >= 0"):
        write_shards(f"imagefolder:{tmp_path / 'src'}", tmp_path / "neg", progress=False, max_pixels=-1)
