# targetd as a container:
#   podman run -d --network=host -v targetd-state:/var/lib/targetd \
#       -e TARGETD_CHAP_USER=host -e TARGETD_CHAP_SECRET=... IMAGE
# The image serves writable LUNs on every interface, so it refuses to start without CHAP
# credentials (TARGETD_CHAP_USER/TARGETD_CHAP_SECRET, or a secret file mounted at
# /run/secrets/targetd-chap holding USER:SECRET) unless TARGETD_ALLOW_NO_CHAP=1 says otherwise.
# Mount a configuration over /etc/targetd/targetd.toml; arguments after the image name
# replace the default ones (CMD), e.g. `--config /etc/targetd/targetd.toml --listen HOST:PORT`.
ARG BASE=python:3.12-slim-bookworm
FROM ${BASE}

# A venv keeps pip away from the distribution's Python (PEP 668) whatever the base is.
RUN python3 -m venv /opt/targetd
ENV PATH=/opt/targetd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY . /src
# The s3 extra (boto3) lets a tape library keep its cartridges in an S3 bucket.
RUN pip install --no-cache-dir "/src[s3]" \
    && rm -rf /src \
    && mkdir -p /var/lib/targetd /etc/targetd
COPY docker/targetd.toml /etc/targetd/targetd.toml

VOLUME ["/var/lib/targetd"]
EXPOSE 3260
# Healthy when the event loop answers on the admin socket (it lives in the state dir).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["targetctl", "status", "--state-dir", "/var/lib/targetd"]
STOPSIGNAL SIGTERM
# --require-chap is in the entry point, so replacing CMD cannot drop it by accident.
ENTRYPOINT ["targetd", "serve", "--require-chap"]
CMD ["--config", "/etc/targetd/targetd.toml", "--state-dir", "/var/lib/targetd"]
