"""theory/tuning_cache.py and StepSizes' use of it: tuned once per key, reused from disk by a
new instance (another process), tuned again when the seed, L or the tuner's version change."""

import json

import pytest

from icl_lightning.data import LinearRegression
from icl_lightning.theory import StepSizes, step_sizes, tuning_cache

TASK = LinearRegression(input_dim=3)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(tuning_cache.VARIABLE, str(folder))
    return folder


def test_store_and_load_by_the_whole_key(cache):
    key = {"tuner": 1, "key": ["task", 10, 2]}
    assert tuning_cache.load(key) is None
    tuning_cache.store(key, {"eta": 1.5})
    assert tuning_cache.load(key) == {"eta": 1.5}
    assert tuning_cache.load({"tuner": 2, "key": ["task", 10, 2]}) is None
    (file,) = cache.iterdir()
    file.write_text("not json")  # a damaged file counts as absent
    assert tuning_cache.load(key) is None


def test_off_and_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning_cache.VARIABLE, "off")
    tuning_cache.store({"a": 1}, {"b": 2})
    assert tuning_cache.cache_dir() is None and tuning_cache.load({"a": 1}) is None
    monkeypatch.delenv(tuning_cache.VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    default = tmp_path / "user_cache" / "icl_lightning" / "step_sizes"
    assert tuning_cache.cache_dir() == default  # the user's cache, not the working directory
    tuning_cache.store({"a": 1}, {"b": 2})
    assert tuning_cache.load({"a": 1}) == {"b": 2}
    assert list(default.glob("*.json")) and not (tmp_path / "logs").exists()


def test_step_sizes_are_tuned_once_and_reused_until_the_key_changes(cache, monkeypatch):
    first = StepSizes(64, seed=0).tune(TASK, 5, 2, "cpu")
    assert len(list(cache.glob("*.json"))) == 1

    calls = []
    original = step_sizes.per_layer_eta_gamma_fit

    def counted(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(step_sizes, "per_layer_eta_gamma_fit", counted)
    again = StepSizes(64, seed=0).tune(TASK, 5, 2, "cpu")  # a new instance: from the disk
    assert calls == [] and again.state_dict() == first.state_dict()
    assert again.plus_plus_fit == first.plus_plus_fit and again.eta_pp == first.eta_pp
    StepSizes(64, seed=1).tune(TASK, 5, 2, "cpu")  # another seed
    StepSizes(64, seed=0).tune(TASK, 5, 3, "cpu")  # another L
    monkeypatch.setattr(step_sizes, "TUNER_VERSION", step_sizes.TUNER_VERSION + 1)
    StepSizes(64, seed=0).tune(TASK, 5, 2, "cpu")  # another tuner version
    assert calls == [2, 3, 2] and len(list(cache.glob("*.json"))) == 4
    stored = [json.loads(f.read_text())["key"] for f in cache.glob("*.json")]
    assert all(entry["options"][-1] == entry["tuner"] for entry in stored)
