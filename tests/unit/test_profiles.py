"""Profile validation: one test per class of bad input, plus overrides and round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from moedesk.profiles import (
    ProfileError,
    load_profile,
    parse_overrides,
    profile_from_dict,
    profile_to_dict,
)
from moedesk.profiles.schema import SECTIONS, section_fields
from tests.conftest import PREPARED

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


BASE = 'name = "t"\nkind = "dense"\nseed = 1\n'


def problems(tmp_path: Path, text: str, overrides: dict | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profile(path, overrides)
    lines = info.value.lines
    assert all(line.startswith(str(path)) for line in lines), lines
    return lines


def test_shipped_profiles_validate(tmp_path, shipped_overrides):
    files = sorted((REPO / "profiles").glob("*.toml"))
    assert files, "profiles/ ships profiles"
    for path in files:
        overrides = shipped_overrides(path)
        if path.name in PREPARED:
            builtin, vocab = PREPARED[path.name]
            # the command to make the folder is in the profile and in the error without it
            assert f"--builtin {builtin} --vocab-size {vocab}" in path.read_text()
            with pytest.raises(ProfileError, match="moedesk data prepare"):
                load_profile(path, {"data.path": str(tmp_path / "missing")})
        profile = load_profile(path, overrides)
        assert profile.path == str(path)


def test_unknown_key_names_the_dotted_key_and_the_allowed_keys(tmp_path):
    (line,) = problems(tmp_path, BASE + "[model]\ndimm = 64\n")
    assert "model.dimm: unknown key" in line and "dim" in line and "n_heads" in line


def test_unknown_section(tmp_path):
    (line,) = problems(tmp_path, BASE + "[modle]\ndim = 64\n")
    assert "modle: unknown key" in line and "model" in line


def test_wrong_type(tmp_path):
    (line,) = problems(tmp_path, BASE + '[train]\nlr = "fast"\n')
    assert "train.lr: got 'fast'; must be a number" in line


def test_bool_is_not_a_number(tmp_path):
    (line,) = problems(tmp_path, BASE + "[train]\nsteps = true\n")
    assert "train.steps: got true; must be an integer" in line


def test_out_of_range(tmp_path):
    (line,) = problems(tmp_path, BASE + "[train]\nlr = -1.0\n")
    assert "train.lr: got -1.0; must be > 0.0" in line


def test_bad_choice_lists_allowed_values(tmp_path):
    (line,) = problems(tmp_path, BASE + '[train]\ndevice = "tpu"\n')
    assert "train.device: got 'tpu'; allowed values: 'auto', 'cpu', 'cuda'" in line


def test_missing_required_top_level_key(tmp_path):
    lines = problems(tmp_path, 'name = "t"\nkind = "dense"\n')
    assert any("seed: missing" in line for line in lines)


def test_bad_kind(tmp_path):
    (line,) = problems(tmp_path, 'name = "t"\nkind = "sparse"\nseed = 1\n')
    assert "kind: got 'sparse'; allowed values: 'dense', 'topk', 'ternary'" in line


def test_broken_toml_names_the_file(tmp_path):
    (line,) = problems(tmp_path, BASE + "[model\ndim = 3\n")
    assert "not valid TOML" in line


def test_missing_file(tmp_path):
    with pytest.raises(ProfileError) as info:
        load_profile(tmp_path / "nope.toml")
    assert "no such profile file" in info.value.lines[0]


@pytest.mark.parametrize("body, key, fragment", [
    ("[model]\ndim = 100\nn_heads = 3\n", "model.dim", "divisible by model.n_heads (3)"),
    ("[model]\nn_heads = 4\nn_kv_heads = 3\n", "model.n_kv_heads", "must divide model.n_heads"),
    ("[train]\nsteps = 10\nwarmup_steps = 20\n", "train.warmup_steps", "<= train.steps (10)"),
    ("[model]\nmax_seq_len = 16\n[data]\nseq_len = 32\n", "data.seq_len", "model.max_seq_len"),
    ('[data]\nsource = "text"\n', "data.path", "needs a file"),
    ('[data]\nsource = "text"\npath = "missing.txt"\n', "data.path", "no such file"),
])
def test_cross_field_rules(tmp_path, body, key, fragment):
    lines = problems(tmp_path, BASE + body)
    assert any(f"{key}:" in line and fragment in line for line in lines), lines


def test_moe_cross_field_rules(tmp_path):
    text = 'name = "t"\nkind = "topk"\nseed = 1\n[moe]\nnum_experts = 4\ntop_k = 5\n' \
           "moe_layers = [0, 9]\n"
    lines = problems(tmp_path, text)
    assert any("moe.top_k: got 5; must be <= moe.num_experts (4)" in line for line in lines)
    assert any("moe.moe_layers" in line and "0..3" in line for line in lines)


def test_every_problem_is_reported_at_once(tmp_path):
    lines = problems(tmp_path, BASE + '[train]\nlr = "x"\nsteps = 0\n[model]\nfoo = 1\n')
    assert len(lines) == 3


def test_overrides_go_through_the_same_validation(tmp_path):
    path = write(tmp_path, BASE)
    assert load_profile(path, parse_overrides(["train.lr=1e-3"])).train.lr == 1e-3
    assert load_profile(path, parse_overrides(["data.source=grammar"])).data.source == "grammar"
    with pytest.raises(ProfileError) as info:
        load_profile(path, parse_overrides(["train.lr=-5"]))
    assert "train.lr: got -5.0" in info.value.lines[0]
    with pytest.raises(ProfileError) as info:
        load_profile(path, parse_overrides(["train.nope=1"]))
    assert "train.nope: unknown key" in info.value.lines[0]


def test_override_syntax_error():
    with pytest.raises(ProfileError) as info:
        parse_overrides(["train.lr"])
    assert "section.key=value" in str(info.value)


def test_int_written_as_float_is_accepted_but_fraction_is_not(tmp_path):
    assert load_profile(write(tmp_path, BASE + "[train]\nsteps = 20.0\nwarmup_steps = 0\n")).train.steps == 20
    (line,) = problems(tmp_path, BASE + "[train]\nsteps = 20.5\nwarmup_steps = 0\n")
    assert "train.steps: got 20.5; must be an integer" in line


def test_health_overrides_are_validated(tmp_path):
    ok = load_profile(write(tmp_path, BASE + "[health.loss_spike]\nfactor = 2.0\n"))
    assert ok.health.rules == {"loss_spike": {"factor": 2.0}}
    (line,) = problems(tmp_path, BASE + "[health.loss_spyke]\nfactor = 2.0\n")
    assert "health.loss_spyke: unknown key" in line and "loss_spike" in line
    (line,) = problems(tmp_path, BASE + '[health.loss_spike]\nfactor = "big"\n')
    assert "health.loss_spike.factor" in line


def test_round_trip_through_dict(tmp_path):
    profile = load_profile(write(tmp_path, BASE + "[train]\nlr = 0.01\n"))
    again = profile_from_dict(profile_to_dict(profile))
    assert again == profile


def test_every_field_is_documented():
    for section in SECTIONS:
        for name, _type, _default, meta in section_fields(section):
            assert meta.get("help"), f"{section}.{name} has no help text"


def test_docs_profiles_lists_every_key():
    text = (REPO / "docs" / "profiles.md").read_text()
    for section in SECTIONS:
        for name, *_ in section_fields(section):
            if section == "health" and name == "rules":
                continue
            assert f"`{section}.{name}`" in text, f"docs/profiles.md misses {section}.{name}"


def test_config_from_an_older_schema_still_loads(tmp_path):
    data = profile_to_dict(load_profile(write(tmp_path, BASE)))
    data["ternary"]["removed_knob"] = 3  # a key a newer moedesk dropped
    del data["train"]["eval_batches"]  # a key an older moedesk did not have
    profile = profile_from_dict(data)
    assert profile.train.eval_batches == 4 and not hasattr(profile.ternary, "removed_knob")
