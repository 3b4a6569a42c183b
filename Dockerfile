# One image for every fraudstream service; the command picks the service:
#   docker run fraudstream scorer | api | dashboard | replay ... | setup | train ...
FROM python:3.11-slim

# PyPI's default torch wheel for Linux carries CUDA (several GB). To build a small CPU-only
# image, pass the CPU wheel index of your PyTorch mirror: --build-arg PIP_EXTRA_INDEX_URL=...
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

RUN useradd --create-home --uid 10001 fraudstream
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY producer producer
COPY scorer scorer
COPY api api
COPY dashboard dashboard
COPY training training
COPY fraudstream fraudstream
COPY data data
RUN pip install -e . && mkdir -p /models /state && chown fraudstream /models /state

USER fraudstream
ENV FRAUDSTREAM_MODEL_PATH=/models/default FRAUDSTREAM_STATE_DIR=/state
ENTRYPOINT ["fraudstream"]
CMD ["--help"]
