"""The editor's model: the CLI's validation and messages, and saves that keep the file."""

from __future__ import annotations

import pytest

from moedesk.profiles import ProfileError, load_profile, parse_overrides
from moedesk.profiles.edit import ProfileDocument, field_specs, to_literal

SPECS = {s.key: s for s in field_specs()}


def test_every_schema_key_is_editable():
    assert {"name", "kind", "seed", "train.lr", "moe.top_k", "ternary.cluster_size",
            "health.stop_on"} <= set(SPECS)
    assert "health.rules" not in SPECS
    assert SPECS["data.source"].choices == ("grammar", "text", "tokens", "trits")
    assert "[1 .. 256]" in SPECS["model.n_layers"].describe()


@pytest.mark.parametrize("key,text,flagged", [
    ("model.dim", "0", "model.dim"), ("data.source", "bogus", "data.source"),
    ("train.lr", "fast", "train.lr"), ("moe.top_k", "9", "moe.top_k"),
    ("model.n_heads", "3", "model.dim"),  # a cross-field rule names the other key
])
def test_problems_are_the_cli_messages(profiles_dir, key, text, flagged):
    path = profiles_dir / "tiny_topk.toml"
    doc = ProfileDocument(path)
    doc.set_raw(SPECS[key], text)
    profile, by_key, lines = doc.validate()
    assert profile is None and flagged in by_key
    with pytest.raises(ProfileError) as cli:  # what `moedesk run --set key=text` says
        load_profile(path, parse_overrides([f"{key}={text}"]))
    assert lines == cli.value.lines


def test_save_keeps_comments_layout_and_literals(profiles_dir):
    path = profiles_dir / "tiny_dense.toml"
    before = path.read_text()
    doc = ProfileDocument(path)
    assert doc.raw(SPECS["train.lr"]) == "3e-3"  # the file's spelling, not 0.003
    doc.set_raw(SPECS["train.steps"], "40")
    doc.set_raw(SPECS["train.lr"], "1e-3")
    doc.set_raw(SPECS["data.source"], "grammar")  # unchanged value: not an edit
    doc.set_raw(SPECS["moe.num_experts"], "4")  # a key (and table) the file lacks
    assert set(doc.edits) == {"train.steps", "train.lr", "moe.num_experts"}
    assert doc.validate()[0] is not None
    doc.save()
    after = path.read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=False)
               if a != b]
    assert changed == [("steps = 150", "steps = 40"), ("lr = 3e-3", "lr = 1e-3")]
    assert after.startswith(before.split("[train]")[0])  # header comments untouched
    assert after.rstrip().endswith("[moe]\nnum_experts = 4")
    loaded = load_profile(path)
    assert (loaded.train.steps, loaded.train.lr, loaded.moe.num_experts) == (40, 1e-3, 4)
    assert not doc.dirty


def test_strings_are_typed_bare_like_the_cli(profiles_dir):
    doc = ProfileDocument(profiles_dir / "tiny_dense.toml")
    assert doc.raw(SPECS["name"]) == "tiny-dense"
    doc.set_raw(SPECS["name"], "my run")
    assert doc.values()["name"] == "my run"
    assert to_literal("true", "str") == '"true"'  # would read back as a bool otherwise
    assert to_literal([0, 1], "list") == "[0, 1]"
    doc.set_raw(SPECS["name"], "tiny-dense")
    assert not doc.dirty
