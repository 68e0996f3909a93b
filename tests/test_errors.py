"""Issue 22's causes 2-6 and 10 as the user meets them: one line on stderr, exit 2, nothing written.

Storage URLs that do not parse, files that are not databases, corrupt journals, a lock path that is a folder,
read-only commands on a missing file, passwords (awkward ones) never printed, half-initialised studies
completed by the next worker, checkpoints of the wrong shape, a full disk, and warnings kept off stderr.
"""

from __future__ import annotations

import errno
import os
import time
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from support import assert_usage_error, cli

from hpo.commands import status as status_command
from hpo.errors import StorageError
from hpo.run import INITIALISED, join
from hpo.spec import load_run_spec
from hpo.storage import mask_secrets, open_storage, url_secrets
from model.checkpoint import WriteError, atomic_write_bytes, check_resumable, load_checkpoint, model_from_checkpoint
from model.config import to_toml
from model.errors import CheckpointError
from model.retrain import run_one

pytestmark = pytest.mark.usefixtures("one_thread")

READERS = [
    ["status"],
    ["best", "--study", "s"],
    ["export", "--study", "s", "-o", "x.toml"],
    ["report", "--study", "s", "-o", "r.html"],
    ["dashboard", "--port", "18931"],
]


@pytest.mark.parametrize("url", ["sqlite:///typo.db", "journal:///typo.log"])
@pytest.mark.parametrize("argv", READERS, ids=lambda a: a[0])
def test_read_only_commands_never_create_a_storage(
    argv: list[str], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, *argv, "--storage", url)
    name = url.split(":///")[1]
    assert_usage_error(code, err, f"{name} does not exist", "creates none")
    assert list(tmp_path.iterdir()) == []


def test_status_of_an_existing_empty_storage_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    open_storage(f"sqlite:///{tmp_path / 'e.db'}")  # what a worker creates
    code, out, _ = cli(capsys, "status", "--storage", f"sqlite:///{tmp_path / 'e.db'}")
    assert code == 0 and "0 studies" in out


NL = bytes([10])
# (URL, or the scheme and the contents of the file it names; None: a folder), the words the one line holds.
BAD_STORAGES = {
    "not-a-db": (("sqlite", b"not a database " * 100), "not an SQLite database"),
    "a-folder": (("sqlite", None), "is a directory"),
    "bad-line": (("journal", b"garbage" + NL + b"{}" + NL), "corrupt"),
    "binary": (("journal", bytes(range(128, 256)) * 4 + NL + NL), "corrupt"),
    "list": (("journal", b"[1, 2]" + NL), "corrupt"),
    "bad-op": (("journal", b'{"op_code": 99}' + NL), "corrupt"),
    "password-with-@": ("postgresql+psycopg://u:p@ss:w0rd@host:1/x", "malformed storage URL"),
    "bad-ipv6": ("postgresql+psycopg://u@[::1/x", "malformed storage URL"),
    "bad-port": ("postgresql+psycopg://u@host:port/x", "malformed storage URL"),
}


@pytest.mark.parametrize("case", list(BAD_STORAGES))
def test_bad_storages_are_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    given, needle = BAD_STORAGES[case]
    if isinstance(given, str):
        url = given
    else:
        scheme, contents = given
        path = tmp_path / f"bad.{'db' if scheme == 'sqlite' else 'log'}"
        if contents is None:
            path.mkdir()
        else:
            path.write_bytes(contents)
        url = f"{scheme}:///{path}"
    for argv in (["status"], ["best", "--study", "s"]):
        code, _, err = cli(capsys, *argv, "--storage", url)
        assert_usage_error(code, err, needle)
        assert "w0rd" not in err


def test_a_lock_path_that_is_a_folder_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    (tmp_path / "l.db.hpo-lock").unlink()  # the lock file opening the storage left (filelock keeps it)
    (tmp_path / "l.db.hpo-lock").mkdir()
    from hpo.locks import study_lock

    with pytest.raises(StorageError, match="study lock .* is a directory: remove it") as info:
        with study_lock(study):
            pass
    assert "\n" not in str(info.value)
    # A worker opening the file takes the same lock while Optuna checks its schema: the same line, at once.
    with pytest.raises(StorageError, match="storage lock .* is a directory: remove it") as info:
        open_storage(url)
    assert "\n" not in str(info.value)


PASSWORDS = ["p@ss:w0rd", "a/b:c@d3f", "100%sure", "s3cr%2Fet", "p%40ss%3Aw0rd", "x:y/z@w?q#r"]


@pytest.mark.parametrize("password", PASSWORDS)
def test_no_password_is_printed(password: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql+psycopg://alice:{password}@127.0.0.1:1/hpo"
    secrets = {p for p in url_secrets(url) if len(p) >= 3}
    for argv in (["status", "--storage", url], ["status", "--debug", "--storage", url], ["best", "--study", "s"]):
        os.environ["HPO_STORAGE"] = url
        try:
            code, out, err = cli(capsys, *argv)
        finally:
            del os.environ["HPO_STORAGE"]
        assert code == 2, err
        assert not [s for s in secrets if s in out + err], (password, err)
        if "--debug" not in argv:
            assert_usage_error(code, err)


def test_mask_secrets_masks_every_form_of_a_password() -> None:
    url = "postgresql+psycopg://u:p%40ss%3Aw0rd@db/x"
    text = "login p@ss:w0rd or p%40ss%3Aw0rd failed near w0rd@db; url " + url
    masked = mask_secrets(text, [url])
    assert "w0rd" not in masked and "p@ss" not in masked and "u:***@db/x" in masked


def test_log_lines_are_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    url = "postgresql+psycopg://alice:hunter2:x@127.0.0.1:1/hpo"

    def noisy(args: object) -> int:
        import logging

        logging.getLogger("some.library").warning("could not reach %s", url)
        return 0

    monkeypatch.setattr(status_command, "run", noisy)
    assert cli(capsys, "status", "--storage", url)[0] == 0
    assert "hunter2" not in caplog.text and "alice:***@127.0.0.1" in caplog.text


def test_warnings_print_nothing_before_the_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def warns(args: object) -> int:
        warnings.warn("a library's noise", UserWarning, stacklevel=1)
        raise StorageError("the one line")

    monkeypatch.setattr(status_command, "run", warns)
    code, _, err = cli(capsys, "status")
    assert_usage_error(code, err, "the one line")


def test_train_help_lists_the_fields(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(capsys, "train", "--help")
    out = capsys.readouterr().out
    for field in ("lr ", "weight_decay", "kl_anneal_type", "out ", "keep_best"):
        assert field in out
    assert "'Cyclical'" in out


def test_train_finds_an_unwritable_out_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    started = time.monotonic()
    code, out, err = cli(capsys, "train", "--set", f"out={tmp_path / 'file' / 'run'}", "--set", "epochs=50")
    assert_usage_error(code, err, "cannot write", "out (--set out=DIR)")
    assert time.monotonic() - started < 60 and "val PSNR" not in out


# --- Cause 6: the right fix in the message ---------------------------------------------------------------


def test_a_read_only_sqlite_file_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_DB_RETRY_SECONDS", "60")
    db = tmp_path / "ro.db"
    optuna.create_study(storage=open_storage(f"sqlite:///{db}"), study_name="s")
    storage = open_storage(f"sqlite:///file:{db}?mode=ro&uri=true", heartbeat=False)
    study = optuna.load_study(study_name="s", storage=storage)
    started = time.monotonic()
    with pytest.raises(StorageError, match="readonly database.*not writable") as info:
        study.set_user_attr("k", 1)
    assert time.monotonic() - started < 5 and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("detail", "needle"),
    [
        ("database is locked", "another process holds it locked"),
        ("database or disk is full", "disk is full"),
        ("attempt to write a readonly database", "not writable"),
        ("file is not a database", "not an SQLite database"),
    ],
)
def test_sqlite_open_errors_name_their_fix(detail: str, needle: str) -> None:
    from sqlalchemy.engine import make_url

    from hpo.storage import _open_hint

    hint = _open_hint("sqlite", detail, make_url("sqlite:///x.db"))
    assert needle in hint and "directory exist" not in hint


@pytest.mark.postgres
def test_an_unknown_postgres_role_is_not_answered_with_createdb(pg_url: str) -> None:
    url = "postgresql+psycopg://no_such_role_22@" + pg_url.split("@", 1)[1]
    with pytest.raises(StorageError) as info:
        open_storage(url)
    message = str(info.value)
    assert "createuser no_such_role_22" in message and "createdb" not in message


# --- Cause 4: a half-initialised study ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_the_next_worker_completes_a_half_initialised_study(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = {"sqlite": f"sqlite:///{tmp_path / 'h.db'}", "journal": f"journal:///{tmp_path / 'h.log'}"}.get(kind)
    url = url or str(request.getfixturevalue("pg_url"))
    spec = load_run_spec("vp-bo", "small", None)
    assert spec.enqueue, "vp-bo warm-starts"
    study = optuna.create_study(storage=open_storage(url), study_name=spec.name, direction="maximize")
    study.set_user_attr("space", "half")  # the first worker was stopped after its first write
    assert join(study, spec) == 0
    again = optuna.load_study(study_name=spec.name, storage=open_storage(url))
    attrs = again.user_attrs
    assert attrs[INITIALISED] is True and attrs["space"] == "half"  # recorded values are kept
    assert attrs["sampler"] == spec.sampler and attrs["pruner"] == spec.pruner and attrs["seed"] == spec.seed
    waiting = again.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == len(spec.enqueue)
    assert join(again, spec) == 1  # a complete study: nothing is enqueued twice
    assert len(again.get_trials()) == len(spec.enqueue)


# --- Checkpoints of the wrong shape, a full disk ---------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_config) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    cfg = root / "best.toml"
    cfg.write_text(to_toml(tiny_config(epochs=2, seed=2)))
    torch.set_num_threads(1)
    from hpo.cli import main

    assert main(["retrain", str(cfg), "--out", str(root / "run"), "-q"]) == 0
    return cfg, root / "run"


def test_a_real_last_checkpoint_is_resumable(run_dir: tuple[Path, Path]) -> None:
    state = load_checkpoint(run_dir[1] / "last.pt")
    check_resumable(state, "last.pt")
    model_from_checkpoint(state)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: s.update(model=[1, 2]), "not named tensors"),
        (lambda s: s.update(config="lr=1"), "not a table of fields"),
        (lambda s: s.update(config={**s["config"], "lr": "fast"}), "config is invalid"),
        (lambda s: s["model"].update({k: torch.zeros(3) for k in list(s["model"])[:1]}), "do not fit the model"),
        (lambda s: s["model"].pop(next(iter(s["model"]))), "do not fit the model"),
    ],
    ids=["weights-a-list", "config-a-string", "config-bad-value", "wrong-tensor-shape", "missing-tensor"],
)
def test_predict_from_a_checkpoint_of_the_wrong_shape(
    edit, needle: str, run_dir: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = torch.load(run_dir[1] / "best.pt", weights_only=True)
    edit(state)
    torch.save(state, tmp_path / "odd.pt")
    from model.synth import make_synthetic

    data = make_synthetic(tmp_path / "lab", seed=3, train_frames=24, val_videos=1, val_len=6, test_videos=1,
                          test_len=4, height=8, width=16)  # fmt: skip
    code, _, err = cli(capsys, "predict", "--checkpoint", tmp_path / "odd.pt", "--data", data, "--out", tmp_path / "p")
    assert_usage_error(code, err, needle)
    assert not (tmp_path / "p" / "submission.csv").exists()


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: s.pop("rng"), "'rng' is missing"),
        (lambda s: s.update(epoch="1"), "epoch is '1'"),
        (lambda s: s.update(optimizer=[]), "'optimizer' is missing or not a dict"),
        (lambda s: s.update(metrics=s["metrics"][:-1]), "one dict per epoch"),
        (lambda s: s["model"].update({k: torch.zeros(3) for k in list(s["model"])[:1]}), "do not fit the model"),
    ],
    ids=["no-rng", "epoch-a-string", "optimizer-a-list", "short-metrics", "wrong-tensor-shape"],
)
def test_resume_from_a_checkpoint_of_the_wrong_shape(
    edit, needle: str, run_dir: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, run = run_dir
    out = tmp_path / "run"
    out.mkdir()
    state = torch.load(run / "last.pt", weights_only=True)
    edit(state)
    torch.save(state, out / "last.pt")
    before = sorted(p.name for p in out.iterdir())
    code, _, err = cli(capsys, "retrain", cfg, "--out", out, "--resume", "-q")
    assert_usage_error(code, err, needle)
    assert sorted(p.name for p in out.iterdir()) == before


def _full_disk(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """Writes of files under `under` fail as on a full disk (ENOSPC when the file is flushed to disk)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(under)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_is_a_one_line_write_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _full_disk(monkeypatch, tmp_path)
    with pytest.raises(WriteError, match="disk is full") as info:
        atomic_write_bytes(tmp_path / "x.bin", lambda f: f.write(b"abc"))
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC  # callers catching OSError still do
    assert list(tmp_path.iterdir()) == []  # no temp file left


@pytest.mark.parametrize("command", ["retrain", "predict"])
def test_a_full_disk_during_retrain_or_predict_is_one_line(
    command: str, run_dir: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cfg, run = run_dir
    if command == "retrain":
        argv = ["retrain", cfg, "--out", tmp_path / "r", "-q"]
    else:
        from model.synth import make_synthetic

        data = make_synthetic(tmp_path / "lab", seed=3, train_frames=24, val_videos=1, val_len=6, test_videos=1,
                              test_len=4, height=8, width=16)  # fmt: skip
        argv = ["predict", "--checkpoint", run / "best.pt", "--data", data, "--out", tmp_path / "r"]
    _full_disk(monkeypatch, tmp_path / "r")
    code, _, err = cli(capsys, *argv)
    assert_usage_error(code, err, "No space left on device", "disk is full")


def test_run_one_with_a_full_disk_leaves_no_temp_files(
    tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model.synth import synthetic_data

    config = tiny_config(epochs=1, out=str(tmp_path / "o"))
    data = synthetic_data(config)
    _full_disk(monkeypatch, tmp_path / "o")
    with pytest.raises(WriteError):
        run_one(config, data)
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]


def test_check_resumable_rejects_a_bool_epoch() -> None:
    with pytest.raises(CheckpointError, match="epoch is True"):
        check_resumable({"epoch": True}, "x.pt")
