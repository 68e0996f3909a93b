"""TrainConfig: TOML + --set loading, types, ranges, round trip."""

import dataclasses

import pytest

from model.config import TrainConfig, from_dict, load_config, parse_sets, to_toml
from model.errors import ConfigError


def test_every_field_has_a_default_and_a_comment():
    import inspect

    import model.config as mc

    src = inspect.getsource(mc.TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        line = next(line for line in src.splitlines() if line.strip().startswith(f"{f.name}:"))
        assert "#" in line, f"field {f.name} lacks its one-line comment"


def test_toml_and_sets(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('lr = 3e-4\nepochs = 5\nkl_anneal_type = "Monotonic"\nlr_milestones = [2, 5]\n')
    c = load_config(p, ["epochs=3", "tfr=0.5", "amp=bf16", "channels_last=false", "lr_milestones=1,4"])
    assert (c.lr, c.epochs, c.tfr, c.kl_anneal_type, c.amp, c.channels_last) == (
        3e-4,
        3,
        0.5,
        "Monotonic",
        "bf16",
        False,
    )
    assert c.lr_milestones == [1, 4]


def test_int_accepted_for_float_field():
    assert from_dict({"tfr": 1}).tfr == 1.0


def test_round_trip_exact(tmp_path):
    c = TrainConfig(lr=0.00012345678901234, tfr=0.3333333333333333, data='a "quoted" path', lr_milestones=[3])
    p = tmp_path / "x.toml"
    p.write_text(to_toml(c.validate(), header="exported"))
    assert load_config(p) == c


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"lrr": 1e-3}, "unknown config field 'lrr'"),
        ({"epochs": "ten"}, "epochs expects an integer"),
        ({"epochs": 2.5}, "epochs expects an integer"),
        ({"lr": True}, "lr expects a number"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"tfr": 1.5}, r"tfr must be in \[0, 1\]"),
        ({"tfr": -0.1}, r"tfr must be in \[0, 1\]"),
        ({"kl_anneal_ratio": 0.0}, "kl_anneal_ratio must be > 0"),
        ({"kl_anneal_type": "Linear"}, "unknown kl_anneal_type 'Linear': use one of Cyclical, Monotonic, None"),
        ({"optimizer": "RMSprop"}, "unknown optimizer 'RMSprop'"),
        ({"device": "tpu"}, "device must be"),
        ({"lr_milestones": [1, "a"]}, "lr_milestones expects a list of integers"),
    ],
)
def test_bad_values(values, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(values)


@pytest.mark.parametrize(
    ("sets", "match"),
    [(["nope=1"], "unknown config field 'nope'"), (["lr=abc"], "expects a number"), (["epochs"], "FIELD=VALUE")],
)
def test_bad_sets(sets, match):
    with pytest.raises(ConfigError, match=match):
        parse_sets(sets)


def test_toml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("lr = 1e-3\nepochs = = 3\n")
    with pytest.raises(ConfigError, match="line 2"):
        load_config(p)
