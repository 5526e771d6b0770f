# One image for the four services and the HTTP/JSON gateway; docker-compose.yml
# runs each one's module (python -m xp_service, achievements_service,
# levels_service, events_service or gateway).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --gid 10001 rewards \
    && useradd --uid 10001 --gid rewards --create-home --shell /usr/sbin/nologin rewards

WORKDIR /build
# The pinned dependencies first, read from pyproject.toml alone, so that a code
# change rebuilds only the project layer below. No dev extras.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt \
    && pip install -r requirements.txt

COPY . .
# pip check: the dependencies installed above satisfy what the project declares.
RUN pip install --no-deps . \
    && pip check \
    && rm -rf /build

# Runs as this user, with a numeric uid so that orchestrators can verify "not
# root" without /etc/passwd.
USER 10001:10001
WORKDIR /home/rewards

# gRPC: XpService, AchievementsService, LevelsService, EventsService; then their
# Prometheus metrics; then the gateway's HTTP/JSON.
EXPOSE 50051 50052 50053 50054 9451 9452 9453 9454 8080

# No HEALTHCHECK here: the port and service name differ per service, so
# docker-compose.yml gives each its own (python -m common.health_probe; the
# gateway's GET /healthz).
# Exec form: python is PID 1 and gets SIGTERM itself, which drains in-flight calls.
CMD ["python", "-m", "xp_service"]
