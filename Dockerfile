# The vp-hpo image: `hpo` on a CUDA build of PyTorch. docker-compose.yml runs its workers and dashboard.
#
#   docker build -t vp-hpo .
#   docker run --rm --gpus 1 -v "$PWD/data:/data:ro" vp-hpo hpo run --study vp-bo --data /data --device cuda \
#       --set cache_dir=/tmp/hpo-cache
#
# The runtime image has no C compiler: `--set compile=true` (torch.compile) needs the -devel variant.
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY model/ model/
COPY hpo/ hpo/

# The base image's torch satisfies `torch>=2.3`; pinning it as a constraint makes pip keep it (or fail the build)
# instead of replacing the CUDA build with another wheel.
RUN python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /tmp/torch-constraint.txt \
    && pip install --no-cache-dir --constraint /tmp/torch-constraint.txt . \
    && rm -rf /tmp/torch-constraint.txt build *.egg-info \
    && python -c "import torch, hpo.cli, model; print('vp-hpo on torch', torch.__version__, 'CUDA', torch.version.cuda)"

# `hpo run --study vp-bo` finds studies/vp-bo.toml in the working directory.
COPY studies/ studies/

# An unprivileged user; the mount points exist and are theirs, so fresh named volumes mounted there are too.
RUN useradd --create-home hpo \
    && mkdir -p /artifacts /cache \
    && chown hpo:hpo /artifacts /cache
USER hpo

CMD ["hpo", "--help"]
