# Stand-in for python:3.11-slim, built from Debian packages on a debootstrap'd bookworm:
# `python` and `pip` on PATH, venv available, pip allowed to install system-wide as in the
# official image. The build machine's CA bundle replaces Debian's, so pip can reach PyPI
# through the TLS interception these machines use; only CI images built on this stand-in
# carry it, never an image built from the public base.
ARG DEBIAN_IMAGE=aggregator-standin/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3-pip python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED
COPY host-ca.crt /tmp/host-ca.crt
RUN if [ -s /tmp/host-ca.crt ]; then mv /tmp/host-ca.crt /etc/ssl/certs/ca-certificates.crt; \
    else rm /tmp/host-ca.crt; fi
ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
