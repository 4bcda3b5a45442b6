# syntax=docker/dockerfile:1
# devstack's image: `docker build -t devstack .` then `docker run -p 8080:8080 devstack`.
#
# Two stages: the builder makes a wheel of devstack (with the feature-release chart and argocd/ inside,
# for `devstack bootstrap`) and installs it, with the [hooks,postgres] extras (the
# provisioning hooks run from this image too), into a virtualenv; the final image gets that virtualenv,
# git (the GitOps store drives the git CLI) and nothing to build with. It runs as UID 10001, keeps its
# state (journal, working clone) in the volume /var/lib/devstack, and listens on 8080.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/devstack
COPY pyproject.toml README.md setup.py ./
COPY service/ service/
# The feature-release chart and argocd/ go into the wheel (setup.py): devstack bootstrap writes them.
COPY templates/ templates/
COPY argocd/ argocd/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && wheel="$(find /wheels -name 'devstack_previews-*.whl' -print -quit)" \
    && /opt/devstack/bin/pip install "${wheel}[hooks,postgres]" \
    && /opt/devstack/bin/devstack --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="devstack" \
      org.opencontainers.image.description="Preview environments per pull request on Kubernetes, through GitOps and Argo CD" \
      org.opencontainers.image.licenses="Apache-2.0"
# git for the GitOps store, ssh for ssh:// remotes, CA certificates for https:// ones.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 devstack \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/devstack --no-create-home \
       --shell /usr/sbin/nologin devstack \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/devstack
COPY --from=builder /opt/devstack /opt/devstack
ENV PATH="/opt/devstack/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/devstack \
    DEVSTACK_STATE_DIR=/var/lib/devstack
VOLUME ["/var/lib/devstack"]
WORKDIR /var/lib/devstack
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["devstack"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
