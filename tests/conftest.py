"""Shared fixtures: a fresh PostgreSQL database per test (`pg_url`), short heartbeats for worker tests, the tiny
training config (`tiny_config`), one finished smoke study per session (`smoke_study`), and `one_thread`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support import scratch_database

from model.config import TrainConfig

if TYPE_CHECKING:
    import optuna

PG_HOST, PG_PORT = "127.0.0.1", 5432

# A model and a synthetic set small enough to train an epoch in about a second on one CPU thread.
TINY = dict(
    epochs=2,
    batch_size=2,
    train_vi_len=4,
    val_vi_len=6,
    frame_h=8,
    frame_w=16,
    f_dim=8,
    l_dim=4,
    n_dim=4,
    d_out_dim=8,
    synth_train_frames=24,
    kl_anneal_cycle=1,
    device="cpu",
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """`postgresql+psycopg://USER@127.0.0.1:5432/hpo_test_<random>`, dropped (FORCE) after the test.

    No server: the test fails when env CI is set (CI has PostgreSQL), else it is skipped.
    """
    with scratch_database(PG_HOST, PG_PORT, "hpo_test_") as url:
        if url is None:
            message = f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT} (database `test`, user root/postgres)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        yield url


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Heartbeat every 1 s, stale after 3 s, DB retries for 20 s: for this process and the workers it starts."""
    env = {"HPO_HEARTBEAT_INTERVAL": "1", "HPO_HEARTBEAT_GRACE": "3", "HPO_DB_RETRY_SECONDS": "20"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., TrainConfig]:
    """`tiny_config(**overrides)`: the validated TrainConfig of TINY (8x16 frames, small dims, CPU) with overrides."""

    def make(**overrides: Any) -> TrainConfig:
        return TrainConfig(**{**TINY, **overrides}).validate()

    return make


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and a shared CI box's other jobs do not slow them down."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class SmokeStudy:
    """A finished smoke study in SQLite: `folder` holds hpo.db and its artifacts (hpo-artifacts/)."""

    folder: Path
    url: str

    def load(self) -> optuna.Study:
        import optuna

        from hpo.storage import open_storage

        return optuna.load_study(study_name="smoke", storage=open_storage(self.url, heartbeat=False))

    def copy(self, folder: Path) -> SmokeStudy:
        """The study and its artifacts copied to `folder` (which must not exist), for a test that writes to it."""
        shutil.copytree(self.folder, folder)
        return SmokeStudy(folder, f"sqlite:///{folder}/hpo.db")


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> SmokeStudy:
    """`hpo run --study smoke --n-trials 4 --device cpu -q` on a fresh SQLite file, once for the whole session.

    Real tiny trials through run_study, with their artifacts. Shared: a test only reads it, and one that writes to
    the study (adds a trial, exports to it, runs `hpo run` on it) does so on `smoke_study.copy(...)`.
    """
    from hpo.artifacts import ARTIFACTS_ENV
    from hpo.cli import main

    folder = tmp_path_factory.mktemp("smoke")
    url = f"sqlite:///{folder}/hpo.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ARTIFACTS_ENV, raising=False)
        assert main(["run", "--study", "smoke", "--n-trials", "4", "--storage", url, "--device", "cpu", "-q"]) == 0
    return SmokeStudy(folder, url)
