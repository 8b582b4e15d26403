# The Lockgate gateway image: dependencies at the exact versions and hashes of requirements.lock,
# installed when the image is built (nothing is installed when a container starts).
#   docker build -t lockgate .
#   docker run -p 8080:8080 -e LOCKGATE_CONFIG=conf/examples/postgres-redis.yaml ... lockgate
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY gateway_core ./gateway_core
COPY plugins ./plugins
COPY conf ./conf
# Installed in place: the price table and the example configurations stay under /app/conf.
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /app lockgate \
    && mkdir -p /app/var \
    && chown lockgate /app/var

USER lockgate
ENV LOCKGATE_CONFIG=conf/lockgate.yaml
EXPOSE 8080
ENTRYPOINT ["lockgate"]
CMD ["serve"]
