"""Study specs: the shipped ones load; every bad spec or run option is one line, exit 2, nothing in the storage."""

import textwrap

import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.cli import main
from hpo.errors import SpecError
from hpo.pruners import make_pruner
from hpo.spec import load_spec

GOOD = """
[study]
name = "t"
[fixed]
epochs = 3
[space.lr]
type = "float"
low = 1e-4
high = 1e-2
log = true
"""


def test_vp_bo_space_is_the_repaired_report_space():
    spec = load_spec("vp-bo")
    assert spec.space["lr"] == FloatDistribution(1e-5, 2e-3, log=True)
    assert spec.space["tfr"] == FloatDistribution(0.3, 1.0)
    assert spec.space["tfr_sde"] == IntDistribution(5, 20)
    assert spec.space["tfr_d_step"] == FloatDistribution(0.0, 0.5)
    assert spec.space["kl_anneal_cycle"] == IntDistribution(5, 20)
    assert spec.space["kl_anneal_ratio"] == FloatDistribution(0.1, 1.0)
    assert spec.space["kl_anneal_type"] == CategoricalDistribution(["Cyclical", "Monotonic", "None"])
    assert spec.fixed["epochs"] == 70 and spec.fixed["val_vi_len"] == 630
    assert spec.enqueue[0]["tfr"] == 0.8 and spec.enqueue[0]["kl_anneal_type"] == "Cyclical"


def test_small_profile_narrows_cycles_below_epochs():
    spec = load_spec("vp-bo", "small")
    assert spec.profile == "small"
    assert spec.space["kl_anneal_cycle"].high < spec.fixed["epochs"]
    assert spec.base_config().f_dim < 128
    assert all(spec.space[k]._contains(spec.space[k].to_internal_repr(v)) for k, v in spec.enqueue[0].items())


def test_small_profile_brings_its_own_pruner():
    # 4-epoch trials: a lenient rung after epoch 1 (beta is 0 there) and a strict one after epoch 2.
    base, small = load_spec("vp-bo"), load_spec("vp-bo", "small")
    assert (base.pruner, base.pruner_options) == ("rungs", {"at_epochs": [3, 21], "reduction_factors": [2, 4]})
    assert (small.pruner, small.pruner_options) == ("rungs", {"at_epochs": [1, 2], "reduction_factors": [2, 16]})
    # both rungs fall before the last epoch, so both act (tests/test_pruners.py shows how each one cuts)
    assert make_pruner(small.pruner, small.fixed["epochs"], small.pruner_options).rungs == {1: 2, 2: 16}
    # the lab profile (70 epochs): one bracket, rungs after the schedules have started (bench/RESULTS.md)
    assert make_pruner(base.pruner, base.fixed["epochs"], base.pruner_options).rungs == {3: 2, 21: 4}


def test_vp_bo_confirms_on_both_profiles():
    # 70-epoch runs on the lab profile: one candidate and one race seed fewer; both estimate on 2 fresh seeds
    for profile, top_k, seeds in ((None, 2, 2), ("small", 3, 3)):
        c = load_spec("vp-bo", profile).confirm
        assert (c.enabled, c.top_k, c.seeds, c.alpha, c.min_seeds, c.estimate) == (True, top_k, seeds, 0.1, 2, 2)
    assert load_spec("smoke").confirm.enabled is False  # no [confirm]: `hpo run` stops after the search


def test_profile_pruner_must_be_a_table(tmp_path):
    text = GOOD + '[profiles.p]\npruner = "median"\n'
    with pytest.raises(SpecError, match=r"\[profiles.p.pruner\] must be a table"):
        load_spec(write(tmp_path, text), "p")
    spec = load_spec(write(tmp_path, GOOD + '[profiles.p.pruner]\nname = "median"\n'), "p")
    assert (spec.pruner, spec.pruner_options) == ("median", {})


def test_trial_config_layers_fixed_params_overrides():
    spec = load_spec("vp-bo", "small")
    c = spec.trial_config({"lr": 3e-4, "tfr": 0.5}, {"device": "cpu", "epochs": 2})
    assert (c.lr, c.tfr, c.device, c.epochs, c.f_dim) == (3e-4, 0.5, "cpu", 2, spec.fixed["f_dim"])


def write(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(textwrap.dedent(text))
    return str(p)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (GOOD + "[space.lrr]\ntype='float'\nlow=1\nhigh=2\n", "unknown field 'lrr' in the search space"),
        (GOOD.replace("epochs = 3", "epoch = 3"), "unknown config field 'epoch'"),
        (GOOD.replace("epochs = 3", 'epochs = "3"'), "epochs expects an integer"),
        (GOOD.replace("low = 1e-4", "low = 1e-1"), r"low \(0.1\) must be < high"),
        (GOOD.replace("low = 1e-4", "low = 0.0"), "log scale needs low > 0"),
        (GOOD + "[space.kl_anneal_type]\nchoices = []\n", "empty categorical"),
        (GOOD + "[space.tfr_sde]\ntype='float'\nlow=1\nhigh=2\n", "not a float field"),
        (GOOD + "[space.device]\nchoices=['cpu']\n", "run setting"),
        (GOOD + "[[enqueue]]\nlr = 0.5\n", "outside its search space"),
        (GOOD.replace("[fixed]", "[fixd]"), "unknown table"),
        ("[space.lr\n", "TOML syntax error.*line 1"),
    ],
)
def test_bad_specs(tmp_path, text, match):
    with pytest.raises(SpecError, match=match):
        load_spec(write(tmp_path, text))


def test_unknown_study_lists_known():
    with pytest.raises(SpecError, match="unknown study 'nope'.*vp-bo"):
        load_spec("nope")


def run_cli(tmp_path, capsys, *args):
    db = tmp_path / "s.db"
    code = main(["run", "--storage", f"sqlite:///{db}", "-q", *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err, db


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--study", "nope"], "unknown study 'nope'"),
        (["--study", "smoke", "--sampler", "bogus"], "unknown sampler 'bogus'"),
        (["--study", "smoke", "--pruner", "bogus"], "unknown pruner 'bogus'"),
        (["--study", "smoke", "--set", "nope=1"], "unknown config field 'nope'"),
        (["--study", "smoke", "--set", "epochs=two"], "expects an integer"),
        (["--study", "smoke", "--n-trials", "0"], "--n-trials must be > 0"),
        (["--study", "smoke", "--n-trials", "-3"], "--n-trials must be > 0"),
        (["--study", "smoke", "--set", "kl_anneal_ratio=-1"], "kl_anneal_ratio must be > 0"),
        (["--study", "smoke", "--set", "lr=1e-3"], "lr is searched"),
        (["--study", "missing/spec.toml"], "not found"),
        (["--study", "smoke", "--device", "bogus"], "device must be auto, cpu, cuda or cuda:N"),
        pytest.param(
            ["--study", "smoke", "--device", "cuda"],
            "CUDA is not available here: use --device cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_run_bad_input_is_one_line_exit_2_nothing_created(tmp_path, capsys, args, match):
    code, err, db = run_cli(tmp_path, capsys, *args)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert pytest.importorskip("re").search(match, err[0]), err[0]
    assert not db.exists(), "a bad invocation must not create the storage"


def test_the_study_records_its_space_as_a_json_value_and_still_accepts_the_old_string_form():
    import json

    import optuna

    from hpo.spec import check_compatible, spec_summary

    spec = load_spec("smoke")
    summary = spec_summary(spec)
    assert isinstance(summary["space"], dict) and isinstance(summary["fixed"], dict)  # readable in the dashboard
    for stored in (summary["space"], spec.space_json()):  # a study of this version, and one of an older version
        study = optuna.create_study(direction="maximize")
        study.set_user_attr("space", stored)
        check_compatible(study, spec)
    changed = json.loads(spec.space_json())
    changed["lr"]["attributes"]["high"] = 1.0
    study.set_user_attr("space", changed)
    with pytest.raises(SpecError, match="different search space"):
        check_compatible(study, spec)
