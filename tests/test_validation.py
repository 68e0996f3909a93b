"""Issue 22: user mistakes are found before the storage is touched (one line, exit 2, nothing written); garbage is
refused; a worker whose trials keep failing the same way stops; workers on one machine split its cores.

The `hpo run` cases run the real CLI in-process on a SQLite file that must not appear; the join cases also run
against a real PostgreSQL database; the core split is checked with real worker processes holding their slots.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import PIL.Image
import pytest
import torch

import model.device as device
from hpo.cli import main
from hpo.errors import SpecError
from hpo.run import join
from hpo.samplers import check_space_options
from hpo.spec import check_values, load_spec
from hpo.storage import open_storage
from hpo.worker import run_worker
from model.config import MAX_SEED, from_dict, load_config
from model.data import check_data, load_data
from model.errors import ConfigError, DataError, DivergedError

SMOKE = (Path(__file__).resolve().parent.parent / "studies" / "smoke.toml").read_text()


def spec_file(tmp_path: Path, text: str, name: str = "s.toml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def smoke_with(tmp_path: Path, old: str, new: str) -> str:
    """The smoke spec with `old` replaced by `new` (old "" appends new as a last table)."""
    if old:
        assert old in SMOKE, old
        return spec_file(tmp_path, SMOKE.replace(old, new, 1))
    return spec_file(tmp_path, SMOKE + "\n" + textwrap.dedent(new))


def run_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    """`hpo run ... -q` on tmp_path/s.db; asserts the database was not created when the exit code is 2."""
    db = tmp_path / "s.db"
    code = main(["run", "--storage", f"sqlite:///{db}", "-q", *args])
    err = capsys.readouterr().err.strip().splitlines()
    if code == 2:
        assert not db.exists(), "a user mistake must not create the storage"
    return code, err


def assert_one_line(code: int, err: list[str], pattern: str) -> None:
    import re

    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(pattern, err[0]), err[0]


# ------------------------------------------------------------------------------- TrainConfig validates every field


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"weight_decay": -1.0}, r"weight_decay must be >= 0"),
        ({"weight_decay": math.nan}, r"weight_decay must be a finite number"),
        ({"momentum": -1.0, "optimizer": "SGD"}, r"momentum must be >= 0"),
        ({"momentum": math.inf}, r"momentum must be a finite number"),
        ({"finetune_lr": math.inf}, r"finetune_lr must be a finite number"),
        ({"seed": -1}, rf"seed must be in 0\.\.{MAX_SEED}"),
        ({"seed": MAX_SEED + 1}, rf"seed must be in 0\.\.{MAX_SEED}"),
        ({"synth_seed": -5}, r"synth_seed must be in"),
        ({"lr_milestones": [0, 3]}, r"lr_milestones must be epochs >= 1"),
    ],
)
def test_every_field_is_validated(values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(values)


def test_valid_edges_still_pass() -> None:
    c = from_dict({"seed": 0, "synth_seed": MAX_SEED, "weight_decay": 0.0, "momentum": 0.0, "lr_milestones": [1, 5]})
    assert (c.seed, c.synth_seed, c.weight_decay, c.momentum) == (0, MAX_SEED, 0.0, 0.0)


def test_a_non_utf8_config_is_one_error(tmp_path: Path) -> None:
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'data = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 11 is 0xe9\): save it as UTF-8"):
        load_config(p)


# --------------------------------------------------------------------------- spec values of the wrong type or shape

SPACE = '[space.{name}]\ntype = "{kind}"\n{body}\n'


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("low = 1e-4", 'low = "1e-4"', r"space\.lr: low must be a finite number, got '1e-4'"),
        ("high = 1e-2", "high = nan", r"space\.lr: high must be a finite number, got nan"),
        ("high = 1e-2", "high = inf", r"space\.lr: high must be a finite number"),
        ("high = 1.0", "high = 1.0\nstep = 0.0", r"space\.tfr: step must be > 0"),
        ("high = 1.0", "high = 1.0\nstep = 0.3", r"not a multiple of step 0\.3: use high = 0\.9"),
        ("log = true", "log = true\nstep = 1e-4", r"log and step cannot go together"),
        ("log = true", 'log = "yes"', r"log must be true or false"),
        ("", "[[enqueue]]\nlr = 1e-3\n[enqueue]\ntfr = 0.5", r"TOML syntax error"),
        ("# smoke", "[enqueue]\nlr = 1e-3\n# smoke", r"\[\[enqueue\]\] must be an array of tables"),
        ("# smoke", 'enqueue = ["lr"]\n# smoke', r"\[\[enqueue\]\] must be an array of tables"),
        ("", SPACE.format(name="tfr_sde", kind="int", body="low = false\nhigh = true"), r"must be a whole number"),
        ("", SPACE.format(name="tfr_sde", kind="int", body="low = 0.5\nhigh = 3"), r"low of an int space must be a"),
        ("", SPACE.format(name="tfr_sde", kind="int", body="low = 0\nhigh = 3.5"), r"high of an int space must be"),
        ("", SPACE.format(name="tfr_sde", kind="int", body="low = 0\nhigh = 3\nstep = 0"), r"step must be > 0"),
        ("", SPACE.format(name="tfr_sde", kind="int", body="low = 0\nhigh = 4\nstep = 3"), r"use high = 3"),
        ("", "[space.lr_milestones]\nchoices = [[1], [2]]", r"choices must be numbers, strings or booleans"),
        ('choices = ["Cyclical", "Monotonic", "None"]', 'choices = ["None", "None"]', r"repeat a value"),
        ('choices = ["Cyclical", "Monotonic", "None"]', 'choices = ["None"]\nlow = 1', r"takes choices only"),
        ("[space.kl_anneal_type]", '[space.kl_anneal_type]\ntype = "float"', r"takes low and high, not choices"),
        ("seed = 0\n\n[sampler]", 'seed = "zero"\n\n[sampler]', r"\[study\] seed must be a whole number"),
        ("seed = 0\n\n[sampler]", "seed = 99999999999\n\n[sampler]", r"\[study\] seed must be a whole number in 0"),
        ('name = "smoke"', "name = 3", r"\[study\]: name must be a non-empty string"),
        ('[sampler]\nname = "tpe"\n', '[sampler_]\nname = "tpe"\n', r"unknown table"),
        ("# smoke", 'sampler = "tpe"\n# smoke', None),  # TOML: a key and a table named alike (syntax error)
        ("[pruner.options]\nn_startup_trials = 2\nn_warmup_steps = 0", "options = 3", r"\[pruner\.options\] must be a"),
        ("# smoke", "fixed = 3\n# smoke", None),  # a TOML syntax error as well: [fixed] redefines it
    ],
)
def test_bad_spec_shapes_are_one_line(tmp_path: Path, old: str, new: str, match: str | None) -> None:
    path = smoke_with(tmp_path, old, new)
    with pytest.raises(SpecError, match=match or "TOML syntax error|must be a table"):
        load_spec(path)


def test_tables_that_are_not_tables(tmp_path: Path) -> None:
    for text, match in (
        ('sampler = "tpe"\n', r"\[sampler\] must be a table"),
        ("fixed = 3\n", r"\[fixed\] must be a table"),
        ("space = [1]\n", r"\[space\] must be a table"),
        ("profiles = { small = 3 }\n", r"\[profiles\.small\] must be a table"),
        ("[profiles.small]\nfixed = 2\n", r"\[profiles\.small\.fixed\] must be a table"),
        ("[sampler]\nname = 5\n", r"\[sampler\]: name must be a non-empty string"),
    ):
        with pytest.raises(SpecError, match=match):
            load_spec(spec_file(tmp_path, text), "small" if "profiles" in text else None)


def test_a_non_utf8_spec_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'[study]\nname = "caf\xe9"\n')
    code, err = run_cli(tmp_path, capsys, "--study", str(p))
    assert_one_line(code, err, r"not UTF-8 text")


# ------------------------------------------------------------------ every value a spec can give is a valid value


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (SPACE.format(name="weight_decay", kind="float", body="low = -1.0\nhigh = 0.1"), r"weight_decay = -1\.0"),
        ("[space.momentum]\nchoices = [0.9, -0.5]", r"momentum = -0\.5, which is not valid"),
        ('[space.optimizer]\nchoices = ["Adam", "Adamax"]', r"optimizer = 'Adamax'.*use one of Adam, AdamW, SGD"),
        (SPACE.format(name="partial", kind="float", body="low = 0.5\nhigh = 1.5"), r"partial = 1\.5"),
        (SPACE.format(name="tfr_sde", kind="int", body="low = -1\nhigh = 4"), r"tfr_sde = -1"),
        (SPACE.format(name="synth_seed", kind="int", body="low = -3\nhigh = 3"), r"synth_seed = -3"),
        (SPACE.format(name="grad_clip", kind="float", body="low = -1.0\nhigh = 1.0"), r"grad_clip = -1\.0"),
        ("[space.kl_anneal_ratio]\nchoices = [1.0, 0.0]", r"kl_anneal_ratio = 0\.0"),
    ],
)
def test_space_values_are_checked_against_train_config(tmp_path: Path, extra: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        load_spec(smoke_with(tmp_path, "", extra))


def test_an_int_space_is_walked_for_multiples(tmp_path: Path) -> None:
    text = SMOKE.replace("f_dim = 8\n", "") + SPACE.format(name="f_dim", kind="int", body="low = 8\nhigh = 32")
    with pytest.raises(SpecError, match=r"f_dim = 9, which is not valid \(f_dim must be a positive multiple of 8\)"):
        load_spec(spec_file(tmp_path, text))
    ok = SMOKE.replace("f_dim = 8\n", "") + SPACE.format(name="f_dim", kind="int", body="low = 8\nhigh = 32\nstep = 8")
    assert load_spec(spec_file(tmp_path, ok)).space["f_dim"].step == 8


def test_space_and_enqueued_values_are_checked_with_the_overrides(tmp_path: Path) -> None:
    body = "low = 2\nhigh = 20"
    text = SMOKE.replace("train_vi_len = 4\n", "") + SPACE.format(name="train_vi_len", kind="int", body=body)
    spec = load_spec(spec_file(tmp_path, text))
    check_values(spec)  # synth_train_frames = 24 holds every clip length
    with pytest.raises(SpecError, match=r"can give train_vi_len = 17, .*synth_train_frames must hold one clip"):
        check_values(spec, {"synth_train_frames": 16})  # as `--set synth_train_frames=16` would
    spec.space.pop("train_vi_len")
    spec.enqueue = [{"lr": 1e-3}, {"train_vi_len": 30}]  # made by hand: the parser refuses it as outside the space
    with pytest.raises(SpecError, match=r"\[\[enqueue\]\] config 2 is not valid \(synth_train_frames must hold"):
        check_values(spec)


@pytest.mark.parametrize(
    ("x0", "match"),
    [
        ({"lr": 5.0, "tfr": 0.5}, r"lr = 5\.0 is outside its search space \[0\.0001, 0\.01\]"),
        ({"lr": 1e-3}, r"lacks \['tfr'\]"),
        ({"lr": 1e-3, "tfr": 0.5, "epochs": 3}, r"sets \['epochs'\], not numeric fields"),
        ({"lr": 1e-3, "tfr": 0.5, "kl_anneal_type": "None"}, r"sets \['kl_anneal_type'\]"),
        ({"lr": "1e-3", "tfr": 0.5}, r"lr = '1e-3' must be a number"),
        ({"lr": 1e-3, "tfr": True}, r"tfr = True must be a number"),
    ],
)
def test_cmaes_x0_is_checked_against_the_space(x0: dict, match: str) -> None:
    spec = load_spec("smoke")
    with pytest.raises(SpecError, match=match):
        check_space_options("cmaes", {"x0": x0}, spec.space)
    check_space_options("cmaes", {"x0": {"lr": 1e-3, "tfr": 0.5}}, spec.space)  # complete and inside: fine
    check_space_options("tpe", {}, spec.space)


# ------------------------------------------------------------------------------------------------- data folders


def write_png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.full((8, 16, 3), value, np.uint8)).save(path)


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    root = tmp_path / "lab"
    for split, n in (("train", 8), ("val", 6)):
        for i in range(n):
            write_png(root / split / f"{split}_img" / f"frame{i}.png", i)
            write_png(root / split / f"{split}_label" / f"frame{i}.png", 100 + i)
    return root


def small(data: Path | str) -> object:
    return from_dict({"data": str(data), "train_vi_len": 4, "val_vi_len": 6, "frame_h": 8, "frame_w": 16})


def test_a_frame_without_a_number_is_a_problem(lab: Path) -> None:
    for side in ("img", "label"):
        (lab / "train" / f"train_{side}" / "frame3.png").rename(lab / "train" / f"train_{side}" / "extra.png")
    problems = check_data(lab, small(lab))  # type: ignore[arg-type]
    assert len(problems) == 2 and all("has no frame number in its name: rename it frameN.png" in p for p in problems)
    with pytest.raises(DataError, match=r"extra\.png has no frame number"):
        load_data(small(lab))  # type: ignore[arg-type]


def test_symlink_loops_in_a_data_folder_are_named(lab: Path, tmp_path: Path) -> None:
    (lab / "val" / "val_img" / "frame99.png").symlink_to("frame99.png")  # a link to itself
    problems = check_data(lab, small(lab))  # type: ignore[arg-type]
    assert any("frame99.png cannot be read (Too many levels of symbolic links)" in p for p in problems), problems
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert check_data(loop) == [
        f"data dir {loop} is a symbolic link that leads to no folder (a loop or a missing target): check the path "
        '(data = "" selects the synthetic set)'
    ]
    (lab / "val" / "val_img" / "frame99.png").unlink()
    img = lab / "train" / "train_img"
    img.rename(tmp_path / "moved")
    img.symlink_to(img)
    assert any("train_img: a symbolic link that leads to no folder" in p for p in check_data(lab, small(lab)))  # type: ignore[arg-type]


# --------------------------------------------------------------------- `hpo run`: found before the storage, exit 2


@pytest.fixture
def bad_sets(tmp_path: Path, lab: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    unpaired = tmp_path / "unpaired"
    write_png(unpaired / "train" / "train_img" / "frame0.png")
    (unpaired / "train" / "train_label").mkdir(parents=True)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    return {"empty": empty, "unpaired": unpaired, "loop": loop, "lab": lab}


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--data", "{tmp}/missing"], r"data dir .*missing not found: check the path"),
        (["--data", "{empty}"], r"train/train_img: folder not found .* \(and \d+ more problems: run `hpo data check"),
        (["--data", "{unpaired}"], r"frame0\.png has no pose image"),
        (["--data", "{loop}"], r"is a symbolic link that leads to no folder"),
        (["--data", "{lab}"], r"val has 6 frame/pose pairs, fewer than one validation video \(val_vi_len=8\)"),
        (["--set", "weight_decay=-1"], r"weight_decay must be >= 0"),
        (["--set", "optimizer=SGD", "--set", "momentum=-1"], r"momentum must be >= 0"),
        (["--set", "amp=fp16", "--device", "cpu"], r"amp=fp16 needs a CUDA device, this run is on cpu"),
        (["--set", "seed=-1"], r"seed must be in 0\.\.4294967295, got -1"),
        (["--set", "seed=99999999999"], r"seed must be in 0\.\.4294967295"),
        (["--seed", "-1"], r"--seed must be in 0\.\.4294967295, got -1"),
        (["--seed", "4294967296"], r"--seed must be in 0\.\.4294967295"),
        (["--timeout", "nan"], r"--timeout must be a number of seconds > 0, got nan: leave it out for no limit"),
        (["--timeout", "inf"], r"--timeout must be a number of seconds > 0, got inf"),
        (["--timeout", "0"], r"--timeout must be a number of seconds > 0"),
        (["--set", "out={tmp}/runs"], r"--set out=DIR would make every trial write its checkpoints into that one"),
        (["--threads", "-1"], r"--threads must be >= 0"),
        (["--set", "lr_milestones=0,2"], r"lr_milestones must be epochs >= 1"),
        (["--sampler", "cmaes"], None),  # no x0: fine, but stopped here by --n-trials 0
    ],
)
def test_run_mistakes_are_found_before_the_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_sets: dict[str, Path], args: list[str], match: str | None
) -> None:
    paths = {"tmp": str(tmp_path), **{k: str(v) for k, v in bad_sets.items()}}
    args = [a.format(**paths) for a in args]
    if match is None:
        code, err = run_cli(tmp_path, capsys, "--study", "smoke", "--n-trials", "0", *args)
        assert_one_line(code, err, r"--n-trials must be > 0")
        return
    code, err = run_cli(tmp_path, capsys, "--study", "smoke", "--set", "val_vi_len=8", *args)
    assert_one_line(code, err, match)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("[fixed]", '[fixed]\nout = "runs"', r"\[fixed\] out = 'runs' would make every trial write"),
        (
            'name = "tpe"\n[sampler.options]\nn_startup_trials = 3',
            'name = "cmaes"\n[sampler.options]\nx0 = { lr = 1e-3 }',
            r"x0 of 'cmaes' lacks \['tfr'\]",
        ),
        ("low = 1e-4", 'low = "1e-4"', r"low must be a finite number"),
        ("", "[space.momentum]\nchoices = [0.9, -0.5]", r"momentum = -0\.5, which is not valid"),
        ("", "[[enqueue]]\nlr = 1e-3\ntfr = 2.0", r"\[\[enqueue\]\] value tfr=2\.0 is outside its search space"),
    ],
)
def test_run_spec_mistakes_are_found_before_the_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, match: str
) -> None:
    code, err = run_cli(tmp_path, capsys, "--study", smoke_with(tmp_path, old, new))
    assert_one_line(code, err, match)


def test_a_bad_threads_setting_in_the_environment_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPO_TORCH_THREADS", "two")
    code, err = run_cli(tmp_path, capsys, "--study", "smoke")
    assert_one_line(code, err, r"HPO_TORCH_THREADS='two' is not a whole number")


# ----------------------------------------------------------------- joining a study with other settings is refused


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_worker_with_another_sampler_pruner_or_epochs_is_refused(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url") if kind == "postgres" else f"sqlite:///{tmp_path / 'j.db'}"
    spec = load_spec("smoke")
    study = optuna.create_study(storage=open_storage(url), study_name="smoke", direction="maximize")
    assert join(study, spec, 2) == 0
    for args, match in (
        (
            ["--sampler", "random"],
            r"study 'smoke' runs sampler tpe \(recorded by its first worker\), this worker asks "
            r"for random: join it with --sampler tpe, or start a new study with --study-name smoke-2",
        ),
        (["--pruner", "none"], r"runs pruner median .* asks for none: join it with --pruner median"),
        (["--set", "epochs=3"], r"runs epochs 2 .* asks for 3: join it with --set epochs=2"),
    ):
        code = main(["run", "--study", "smoke", "--storage", url, "-q", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert_one_line(code, err, match)
    after = optuna.load_study(study_name="smoke", storage=open_storage(url))
    assert after.user_attrs["workers_joined"] == 1 and len(after.trials) == 0  # nothing written by the refused


# ------------------------------------------------------------- a worker whose trials fail the same way stops


def test_the_same_error_three_times_stops_the_worker() -> None:
    calls = []

    def broken(trial: optuna.Trial) -> float:
        calls.append(trial.number)
        raise DataError("/data/train/frame5.png is not a readable image")

    study = optuna.create_study()
    result = run_worker(study, broken, 50)
    assert (result.trials_run, result.failed, result.stopped) == (3, 3, "failures")
    assert result.error == "DataError: /data/train/frame5.png is not a readable image"


def test_different_errors_and_divergence_do_not_count_as_the_same() -> None:
    def varied(trial: optuna.Trial) -> float:
        if trial.number % 2:
            raise DivergedError(0, math.nan)  # depends on the params: never stops the worker early
        raise ValueError(f"bad {trial.number}")

    result = run_worker(optuna.create_study(), varied, 50)
    assert (result.trials_run, result.stopped, result.error) == (10, "failures", "")  # the old 10-in-a-row rule

    def diverging(trial: optuna.Trial) -> float:
        raise DivergedError(0, math.nan)

    result = run_worker(optuna.create_study(), diverging, 50, max_consecutive_failures=6)
    assert (result.trials_run, result.error) == (6, "")

    flaky = iter([True, True, False, True, True, False, True, True, True])

    def sometimes(trial: optuna.Trial) -> float:
        if next(flaky):
            raise OSError("disk full")
        return 1.0

    result = run_worker(optuna.create_study(), sometimes, 50)
    assert (result.trials_run, result.complete, result.error) == (9, 2, "OSError: disk full")


def test_run_stops_on_a_repeated_trial_error_with_it_in_one_line(
    tmp_path: Path, lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (lab / "train" / "train_img" / "frame5.png").write_bytes(b"not a png")  # found only when decoded, in a trial
    url = f"sqlite:///{tmp_path / 'f.db'}"
    code = main(["run", "--study", "smoke", "--storage", url, "-q", "--data", str(lab), "--set", "val_vi_len=6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: the last trials all failed with the same error, so this worker stopped: ")
    assert "frame5.png is not a readable image" in err[0]
    study = optuna.load_study(study_name="smoke", storage=url)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3


# ---------------------------------------------------------------------- workers on one machine split its cores


def test_core_share_splits_evenly_and_gives_the_rest_to_the_first() -> None:
    assert [device.core_share(2, 1, 0)] == [2]
    assert [device.core_share(2, 3, r) for r in range(3)] == [1, 1, 1]
    assert [device.core_share(8, 3, r) for r in range(3)] == [3, 3, 2]
    assert [device.core_share(16, 4, r) for r in range(4)] == [4, 4, 4, 4]


def test_threads_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_TORCH_THREADS", raising=False)
    assert device.threads_setting(None) is None and device.threads_setting(3) == 3 and device.threads_setting(0) == 0
    monkeypatch.setenv("HPO_TORCH_THREADS", " 2 ")
    assert device.threads_setting(None) == 2 and device.threads_setting(5) == 5  # the flag wins
    for bad in ("-1", "1.5", "all"):
        monkeypatch.setenv("HPO_TORCH_THREADS", bad)
        with pytest.raises(ConfigError, match="HPO_TORCH_THREADS"):
            device.threads_setting(None)


HOLDER = """
import sys, time
from pathlib import Path
import model.device as d
d.slots_dir = lambda: Path(sys.argv[1])
print(d.share_cores(None), flush=True)
time.sleep(60)
"""


def test_workers_on_one_machine_split_its_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slots = tmp_path / "slots"
    before = torch.get_num_threads()
    monkeypatch.setattr(device, "slots_dir", lambda: slots)
    monkeypatch.setattr(device, "_slot", None)
    monkeypatch.setattr(device, "_torch_default", 8)
    monkeypatch.setattr(device, "cpu_count", lambda: 6)
    holders = [
        subprocess.Popen([sys.executable, "-c", HOLDER, str(slots)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for h in holders:
            assert h.stdout is not None and h.stdout.readline().strip()  # it holds its slot now
        assert device.share_cores(None) == 2  # 3 workers on 6 cores
        assert torch.get_num_threads() == 2
        assert device.share_cores(4) == 4 and device.share_cores(0) == 8  # the override: N, or torch's default
        gone = holders.pop()
        gone.kill()
        gone.wait()
        deadline = time.monotonic() + 10
        while device.share_cores(None) != 3 and time.monotonic() < deadline:  # 2 workers now, on 6 cores
            time.sleep(0.1)
        assert device.share_cores(None) == 3
    finally:
        for h in holders:
            h.kill()
            h.wait()
        assert device._slot is not None
        os.close(device._slot[1])
        torch.set_num_threads(before)


def test_a_lone_worker_keeps_torchs_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(device, "slots_dir", lambda: tmp_path / "slots")
    monkeypatch.setattr(device, "_slot", None)
    monkeypatch.setattr(device, "_torch_default", None)
    try:
        assert device.share_cores(None) == before  # never above torch's default: one worker runs as before
    finally:
        if device._slot is not None:
            os.close(device._slot[1])
        torch.set_num_threads(before)
