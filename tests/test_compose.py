"""docker-compose.yml, Dockerfile and .env.example (docs/ARCHITECTURE.md, "Storage"), checked without a Docker engine.

The compose file is read with PyYAML and its `${VAR}` references are expanded the way Compose does, so the
commands can go through the real `hpo` parser and `hpo.run.prepare`, and the environment through the real
`resolve_url` / `artifacts_dir`.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from sqlalchemy.engine import make_url

from hpo.artifacts import artifacts_dir
from hpo.cli import build_parser
from hpo.run import RunOptions, prepare
from hpo.storage import resolve_url
from model.config import parse_sets

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

PASSWORD = "s3cretTestPassword"  # stands in for the .env value
ENV = {"POSTGRES_PASSWORD": PASSWORD}

# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is a literal $.
_REF = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    """A `${VAR:?message}` reference whose variable is unset or empty."""


def expand(text: str, env: dict[str, str]) -> str:
    """`text` with its `${...}` references replaced as `docker compose` does with environment `env`."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = env.get(name)
        if op in (":-", ":?"):
            unset = not value
        else:
            unset = value is None
        if op in (":-", "-"):
            return arg if unset else str(value)
        if op in (":?", "?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    out = _REF.sub(one, text)
    leftover = _REF.sub("", text)
    assert "$" not in leftover, f"unsupported $-reference in {text!r}: write ${{VAR}}"
    return out


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """`expand` applied to every string value of a parsed YAML tree."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    return expand(node, env) if isinstance(node, str) else node


def variables(text: str) -> dict[str, str | None]:
    """Each variable the text references -> its operator (None for plain `${VAR}`)."""
    return {m.group("name"): m.group("op") for m in _REF.finditer(text) if m.group("name")}


def load(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file, parsed (anchors and `<<` merges resolved), then interpolated with `env`."""
    return interpolate(yaml.safe_load(COMPOSE.read_text()), ENV if env is None else env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def volumes(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each mount, short or long syntax."""
    out = []
    for item in service.get("volumes", []):
        if isinstance(item, dict):
            out.append((str(item.get("source", "")), item["target"], bool(item.get("read_only", False))))
            continue
        source, target, *mode = item.split(":")
        out.append((source, target, "ro" in (mode[0].split(",") if mode else [])))
    return out


def ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host_ip, container port) of each published port; host_ip "" means every interface."""
    out = []
    for item in service.get("ports", []):
        if isinstance(item, dict):
            out.append((str(item.get("host_ip", "")), int(item["target"])))
            continue
        parts = str(item).split("/")[0].split(":")
        out.append((parts[0] if len(parts) == 3 else "", int(parts[-1])))
    return out


def hpo_args(service: dict[str, Any]) -> Any:
    """The service's command parsed by the real `hpo` parser."""
    command = service["command"]
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    assert argv[0] == "hpo", f"command should start with the `hpo` script: {argv}"
    return build_parser().parse_args(argv[1:])


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load()["services"]


def test_compose_has_the_three_services(services: dict[str, Any]) -> None:
    assert {"db", "dashboard", "worker"} <= set(services)


def test_db_is_postgres16_with_healthcheck_and_named_volume(services: dict[str, Any]) -> None:
    db = services["db"]
    assert db["image"] == "postgres:16"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    named = set(load()["volumes"])
    mounts = {target: source for source, target, _ in volumes(db)}
    assert mounts.get("/var/lib/postgresql/data") in named
    # Not reachable from other hosts unless the README's step publishes it.
    assert all(host == "127.0.0.1" for host, _ in ports(db))


def test_password_comes_only_from_the_environment() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    required = re.compile(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}")
    assert required.fullmatch(raw["services"]["db"]["environment"]["POSTGRES_PASSWORD"])
    for name, service in raw["services"].items():
        url = environment(service).get("HPO_STORAGE")
        if url is not None:
            userinfo = url.partition("://")[2].rpartition("@")[0]
            assert required.fullmatch(userinfo.partition(":")[2]), f"{name}: password in HPO_STORAGE is literal"
    assert "change-me" not in COMPOSE.read_text()
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        load(env={})


def test_every_service_uses_one_postgres_url_at_db(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    urls = {name: environment(s)["HPO_STORAGE"] for name, s in services.items() if "HPO_STORAGE" in environment(s)}
    assert {"dashboard", "worker"} <= set(urls)
    assert len(set(urls.values())) == 1, urls
    url = make_url(urls["worker"])
    db_env = environment(services["db"])
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "db" and url.port in (None, 5432)
    assert (url.username, url.password, url.database) == (
        db_env["POSTGRES_USER"],
        db_env["POSTGRES_PASSWORD"],
        db_env["POSTGRES_DB"],
    )
    assert url.password == PASSWORD
    # hpo reads exactly these variables: the storage and the artifact folder both follow them.
    worker_env = environment(services["worker"])
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    assert resolve_url(None) == urls["worker"]
    assert artifacts_dir(urls["worker"]) == Path(worker_env["HPO_ARTIFACTS"])


def test_dashboard_and_workers_share_the_artifact_volume(services: dict[str, Any]) -> None:
    named = set(load()["volumes"])
    sources = set()
    for name in ("dashboard", "worker"):
        folder = environment(services[name])["HPO_ARTIFACTS"]
        mounts = {target: (source, ro) for source, target, ro in volumes(services[name])}
        assert folder in mounts, f"{name}: HPO_ARTIFACTS {folder} is not a mount"
        source, read_only = mounts[folder]
        assert source in named and not read_only
        sources.add(source)
    assert len(sources) == 1


@pytest.fixture(scope="module")
def lab_shaped_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A data set in the lab layout that holds the lab profile's clips (630-frame val video), as /data would."""
    from model.synth import make_synthetic

    out = tmp_path_factory.mktemp("lab") / "data"
    make_synthetic(out, 0, train_frames=32, val_videos=1, val_len=630, test_videos=0, height=16, width=32)
    return str(out)


@pytest.mark.parametrize(("env", "n_trials"), [({}, 50), ({"HPO_N_TRIALS": "7"}, 7)])
def test_worker_command_is_a_valid_hpo_run(
    env: dict[str, str], n_trials: int, monkeypatch: pytest.MonkeyPatch, lab_shaped_data: str
) -> None:
    # The worker runs on a GPU host: `prepare` checks that --device cuda exists, so stand in for one GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    worker = load({**ENV, **env})["services"]["worker"]
    args = hpo_args(worker)
    assert (args.command, args.study, args.device, args.n_trials) == ("run", "vp-bo", "cuda", n_trials)
    assert args.storage is None  # the storage comes from HPO_STORAGE
    mounts = {target: ro for _, target, ro in volumes(worker)}
    assert mounts.get(args.data) is True, "the data set must be mounted read-only at --data"
    # The decode cache cannot live beside read-only data: it must be a writable mount.
    cache_dir = parse_sets(args.sets).get("cache_dir")
    assert cache_dir is not None and mounts.get(cache_dir) is False
    # The same validation `hpo run` does before touching the storage: spec, --set values, sampler options, and
    # the data set's layout (the container's /data stands here as a lab-shaped folder on this machine).
    plan = prepare(
        RunOptions(study=args.study, n_trials=args.n_trials, data=lab_shaped_data, device=args.device, sets=args.sets)
    )
    assert plan.spec.name == "vp-bo" and plan.overrides["device"] == "cuda"


def test_dashboard_command_listens_on_the_published_port_of_localhost(services: dict[str, Any]) -> None:
    dashboard = services["dashboard"]
    args = hpo_args(dashboard)
    assert (args.command, args.host) == ("dashboard", "0.0.0.0")
    assert args.storage is None
    assert ports(dashboard) == [("127.0.0.1", args.port)]


def test_worker_scales_and_reserves_a_gpu(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    gpu = devices[0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"] and gpu["count"] == 1
    for name in ("dashboard", "worker"):
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"


def _dockerfile() -> tuple[str, list[tuple[str, str]]]:
    """(the base image with ARG defaults substituted, [(instruction, arguments)] with continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    steps = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    args = dict(a.partition("=")[::2] for op, a in steps if op == "ARG")
    bases = [expand(a.split()[0], args) for op, a in steps if op == "FROM"]
    return bases[-1], steps


def test_dockerfile_installs_the_project_on_a_cuda_pytorch_image() -> None:
    base, steps = _dockerfile()
    m = re.fullmatch(r"pytorch/pytorch:(?P<torch>\d+\.\d+(?:\.\d+)?)-cuda[\d.]+-cudnn\d+-(runtime|devel)", base)
    assert m, f"base image {base!r} is not a CUDA build of pytorch/pytorch"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    torch_req = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")
    assert torch_req.specifier.contains(Version(m.group("torch"))), "the base torch must satisfy the dependency"

    installs = [i for i, (op, a) in enumerate(steps) if op == "RUN" and re.search(r"pip install .*\s\.(\s|$)", a)]
    assert len(installs) == 1, "exactly one RUN installs the project (`pip install ... .`)"
    install = steps[installs[0]][1]
    # pip keeps the base image's torch only when it is pinned: a constraint file written from the installed torch.
    pip_args = re.search(r"pip install([^&;|]*)", install)
    constraint = re.search(r"(?:--constraint|-c)\s+(\S+)", pip_args.group(1) if pip_args else "")
    assert constraint, "install the project with --constraint FILE pinning the base image's torch"
    written = install[: install.index("pip install")]
    assert "torch==" in written and re.search(rf">\s*{re.escape(constraint.group(1))}", written)
    copied = {Path(src).as_posix() for op, a in steps[: installs[0]] if op == "COPY" for src in a.split()[:-1]}
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", project["readme"], *packages} <= copied
    assert "studies" in {Path(src).as_posix() for op, a in steps if op == "COPY" for src in a.split()[:-1]}
    assert any(op == "WORKDIR" for op, _ in steps)

    ignored = [line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()]
    ignored = [p for p in ignored if p and not p.startswith("#")]
    for path in ("pyproject.toml", "README.md", "model", "hpo", "studies"):
        assert not any(Path(path).match(p) for p in ignored), f".dockerignore drops {path}"
    for path in (".git", ".venv", "venv", "data", "runs", "hpo.db", ".env"):
        assert any(Path(path).match(p) for p in ignored), f".dockerignore keeps {path}"


def test_both_images_are_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    for name in ("dashboard", "worker"):
        build = services[name]["build"]
        assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    assert services["dashboard"]["image"] == services["worker"]["image"]


def test_env_example_defines_every_variable_the_compose_file_reads() -> None:
    example = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=VALUE"
            example[key.strip()] = value.strip()
    used = variables(COMPOSE.read_text())
    assert {"POSTGRES_PASSWORD", "HPO_DATA", "HPO_N_TRIALS"} <= set(used)
    missing = set(used) - set(example)
    assert not missing, f".env.example lacks {sorted(missing)}"
    assert all(example[name] for name, op in used.items() if op in (":?", "?"))
    load(env=example)  # no required variable is left unset
    assert ".env" in (ROOT / ".gitignore").read_text().split()
