"""Publishing a finished file and naming it: the cases the mutation run found untested.

Each test kills mutants of ``daqd/sinks/paths.py`` that every other test let live
(``python tests/mutation/run_mutation.py paths``).
"""

import errno
import os
import time

import pytest

from daqd.pipeline.datatime import CaptureBlock
from daqd.sinks import paths
from daqd.sinks.paths import PathTemplate, publish


def make(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


@pytest.fixture
def no_hard_links(monkeypatch):
    """A file system without hard links (vfat, some FUSE): link(2) fails with EPERM."""
    def link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", src)
    monkeypatch.setattr(paths.os, "link", link)


def test_without_hard_links_the_file_is_renamed_to_its_name(tmp_path, no_hard_links):
    tmp = make(tmp_path / "a.bin.tmp", "data")
    assert publish(tmp, str(tmp_path / "a.bin")) == str(tmp_path / "a.bin")
    assert sorted(os.listdir(tmp_path)) == ["a.bin"]
    assert (tmp_path / "a.bin").read_text() == "data"


def test_without_hard_links_a_taken_name_is_numbered_not_replaced(tmp_path, no_hard_links):
    make(tmp_path / "a.bin", "old")
    make(tmp_path / "a.1.bin", "older")
    tmp = make(tmp_path / "a.bin.tmp", "new")
    assert publish(tmp, str(tmp_path / "a.bin")) == str(tmp_path / "a.2.bin")
    assert [(tmp_path / n).read_text() for n in ("a.bin", "a.1.bin", "a.2.bin")] == \
        ["old", "older", "new"]
    assert not os.path.lexists(tmp)


def test_a_link_error_other_than_no_hard_links_is_raised_and_keeps_the_file(
        tmp_path, monkeypatch):
    def link(src, dst):
        raise OSError(errno.EIO, "Input/output error", src)
    monkeypatch.setattr(paths.os, "link", link)
    tmp = make(tmp_path / "a.bin.tmp", "data")
    with pytest.raises(OSError) as info:
        publish(tmp, str(tmp_path / "a.bin"))
    assert info.value.errno == errno.EIO
    assert sorted(os.listdir(tmp_path)) == ["a.bin.tmp"]


def test_a_publish_cut_short_after_the_link_drops_the_temporary_name(tmp_path):
    # A crash between link(2) and unlink(2) leaves the file under both names.
    final = make(tmp_path / "a.bin", "data")
    tmp = str(tmp_path / "a.bin.tmp")
    os.link(final, tmp)
    assert publish(tmp, final) == final
    assert sorted(os.listdir(tmp_path)) == ["a.bin"]


@pytest.fixture
def local_time_not_utc(monkeypatch):
    """A machine whose local time is UTC+05:30, so that UTC and local names differ."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_file_names_are_in_utc_whatever_the_local_time_zone(local_time_not_utc):
    assert time.localtime(0).tm_hour == 5          # the zone is really in effect
    template = PathTemplate("d/{stream}-{start:%Y%m%dT%H%M%S}-{seq}.bin")
    assert template.render("adc0", 0.0, 3, 0) == "d/adc0-19700101T000000-3.bin"


@pytest.mark.parametrize(("block", "name"), [
    (None, "none"),
    (CaptureBlock("cb7"), "cb7"),
    (CaptureBlock("obs/7\0x"), "obs_7_x"),        # one file, never a directory
])
def test_the_capture_block_field_names_the_block_in_one_path_component(block, name):
    template = PathTemplate("d/{capture_block}/{stream}-{seq}.bin")
    assert template.render("adc0", 0.0, 1, 0, capture_block=block) == f"d/{name}/adc0-1.bin"


@pytest.mark.parametrize(("template", "words"), [
    ("d/{}.bin", "positional fields ({}) are not allowed; name the field"),
    ("d/{0}.bin", "positional fields ({}) are not allowed; name the field"),
    ("d/{stream}-{when}.bin", "unknown field {when}; the fields are {stream}, {start}, {seq}, "
                              "{chunk_id}, {capture_block}"),
    ("d/{stream}/", "names a directory, not a file"),
    ("", "names a directory, not a file"),
])
def test_a_bad_template_is_refused_in_words(template, words):
    with pytest.raises(ValueError) as info:
        PathTemplate(template)
    assert str(info.value) == words


def test_fields_keep_their_specs_in_order():
    assert paths.template_fields("{stream}/{start:%Y}{seq:04d}.{chunk_id}") == \
        [("stream", ""), ("start", "%Y"), ("seq", "04d"), ("chunk_id", "")]
    assert PathTemplate("d/{start.year}-{capture_block[0]}.bin").uses_seq is False


@pytest.mark.parametrize(("template", "pattern"), [
    ("d/{stream}-{seq}.bin", "d/adc0-*.bin"),
    ("d/{stream!r}-{seq}.bin", "d/'adc0'-*.bin"),
    ("d/{stream!s:>6}/{start:%H}.bin", "d/  adc0/*.bin"),
    ("d/{stream!a}.bin", "d/'adc0'.bin"),
    ("d/{stream:{seq}}.bin", "d/*.bin"),            # a nested spec: any name
    ("d/[{stream}].bin", "d/[[]adc0].bin"),          # literal text escaped
])
def test_a_streams_glob_matches_its_own_names_only(template, pattern):
    assert paths.template_glob(template, "adc0") == pattern
