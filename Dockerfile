# The image the Helm chart runs by default (ghcr.io/changevault/changevault).
# Build: docker build -t changevault .
# Two stages: wheels are built with pip's build tooling, the runtime stage
# only installs them, so no compiler or build cache ends up in the image.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY connectors ./connectors
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[s3]'

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Fixed uid/gid: the chart's securityContext (runAsUser/fsGroup 10001) matches.
RUN groupadd --system --gid 10001 changevault \
 && useradd --system --uid 10001 --gid changevault --no-create-home \
      --home-dir /var/lib/changevault --shell /usr/sbin/nologin changevault \
 && mkdir -p /etc/changevault /var/lib/changevault \
 && chown changevault:changevault /var/lib/changevault
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'changevault[s3]' \
 && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/changevault
EXPOSE 9187
ENTRYPOINT ["changevault"]
CMD ["run", "-c", "/etc/changevault/changevault.yaml"]
