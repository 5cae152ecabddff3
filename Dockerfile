# syntax=docker/dockerfile:1
# meshscope in one image: every service of compose.yaml runs it with its own subcommand
# (`meshscope relay`, `collector`, `dashboard`, `simulate`), and the one-shot `certs` service runs
# meshscope-deploy-certs (deploy/certs.sh).
#
#   docker build -t meshscope .        docker run --rm meshscope --help
#
# The build stage installs meshscope (not editable) with its dependencies into a virtualenv; the
# final stage copies only that virtualenv onto a fresh base, so no build backend, pip cache or
# source tree is left in the image. Every dependency ships manylinux wheels: no compiler anywhere.
# Both stages use the same base image, because the virtualenv's python links to the base's.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV VIRTUAL_ENV=/opt/meshscope PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The source arrives as a bind mount, read-only (BuildKit's default), never as an image layer. The
# build backend (hatchling) writes nothing into the tree, so the install works without a writable copy.
# .ci/check-deploy runs the command of the RUN right below this marker, from a read-only copy of the tree.
# check-deploy: install
RUN --mount=type=bind,target=/src --mount=type=cache,target=/root/.cache/pip \
    python -m venv --without-pip "$VIRTUAL_ENV" \
    && python -m pip --python "$VIRTUAL_ENV/bin/python" install --only-binary=:all: -c constraints.txt .

FROM ${PYTHON_IMAGE}
# pip, setuptools and wheel of the base image are packaging tools the services never use.
# /certs and /ca are the mount points of compose.yaml's named volumes: a new named volume takes the
# owner and mode of the directory it is mounted on, so uid 10001 may write them and no other user read them.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --gid 10001 meshscope \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/meshscope --create-home --shell /usr/sbin/nologin meshscope \
    && install -d -o 10001 -g 10001 -m 0700 /certs /ca
COPY --from=build /opt/meshscope /opt/meshscope
COPY --chmod=0755 deploy/certs.sh /usr/local/bin/meshscope-deploy-certs
ENV VIRTUAL_ENV=/opt/meshscope \
    PATH=/opt/meshscope/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/meshscope
# relay, collector /metrics, dashboard
EXPOSE 7400 7410 8080
ENTRYPOINT ["meshscope"]
CMD ["--help"]
