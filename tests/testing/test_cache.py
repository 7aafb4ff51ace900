"""The fixture cache (visionr3.testing.cache): one build under concurrent builders, nothing half-written trusted."""

import threading
import time

import pytest

from visionr3.testing.cache import MANIFEST, cached_build, verify


def _builder(calls: list, content: str = "weights", delay: float = 0.0):
    def build(staging):
        calls.append(threading.current_thread().name)
        time.sleep(delay)
        (staging / "model.bin").write_text(content)
        (staging / "sub").mkdir()
        (staging / "sub" / "config.json").write_text("{}")

    return build


def test_concurrent_builders_build_once_and_all_get_the_same_verified_directory(tmp_path):
    calls, results = [], []
    target = tmp_path / "entry"
    threads = [threading.Thread(target=lambda: results.append(cached_build(target, "k1", _builder(calls, delay=0.3))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(built for _, built in results) == [False, False, False, True]
    assert {path for path, _ in results} == {target} and verify(target, "k1") is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".entry.") and p.is_dir()]  # no staging left


def test_a_directory_for_another_key_or_with_a_changed_file_is_rebuilt(tmp_path):
    calls = []
    target = tmp_path / "entry"
    cached_build(target, "k1", _builder(calls, "one"))
    assert cached_build(target, "k1", _builder(calls, "two")) == (target, False)
    (target / "model.bin").write_text("tampered")
    assert "sha256" in verify(target, "k1")
    assert cached_build(target, "k1", _builder(calls, "two")) == (target, True)
    assert (target / "model.bin").read_text() == "two"
    assert "key" in verify(target, "k2")
    (target / "extra.txt").write_text("x")
    assert "extra" in verify(target, "k1")
    assert cached_build(target, "k1", _builder(calls, "three"))[1] and not (target / "extra.txt").exists()
    assert len(calls) == 3


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def broken(staging):
        (staging / "model.bin").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cached_build(tmp_path / "entry", "k1", broken)
    assert not (tmp_path / "entry").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".entry.lock"]
    assert cached_build(tmp_path / "entry", "k1", _builder([]))[1]
    assert (tmp_path / "entry" / MANIFEST).exists()
