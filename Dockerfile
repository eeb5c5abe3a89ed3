# onceonly: one image for every component (central, node, portal, desk, runner); the command
# chooses the component, e.g. `onceonly node --member JP/GOV/132098 --host 0.0.0.0 --port 8101`.
# Keys and SQLite files live in the data directory, a volume: never baked into the image.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ONCEONLY_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY onceonly ./onceonly
COPY exchange ./exchange
COPY adapters ./adapters
COPY policies ./policies
COPY consent ./consent
COPY audit ./audit
COPY alerts ./alerts
COPY procedures ./procedures
COPY portal ./portal
# /handover: the mount point compose.yaml's provisioning services share (a volume mounted where the
# image has no folder would belong to root, and the unprivileged user could not write it).
# OPA's own engine in-process (docs/policies.md "Engines"); its wheel declares Python >= 3.14 but
# works on 3.11, and where it cannot be installed the nodes fall back to regopy (auto).
RUN pip install --no-compile . \
 && (pip install --no-compile --ignore-requires-python opa-golib-python-bindings==0.4.4 \
     || echo "opa-golib-python-bindings not installable: nodes will use regopy") \
 && useradd --system --uid 10001 --home-dir /data --create-home onceonly \
 && install -d -o onceonly -g onceonly -m 0700 /handover

USER onceonly
VOLUME ["/data"]
ENTRYPOINT ["onceonly"]
CMD ["--help"]
