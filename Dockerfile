# The memray image: the official Ray image of the pinned version plus memray, installed with the same pins as
# `make setup`. No image is published; your CI builds it from this checkout and pushes it to your registry:
#
#   docker build --build-arg VARIANT=-gpu -t your-registry.example/memray:0.1.0-ray2.60.0-py311-gpu .
#   docker build --build-arg VARIANT= -t your-registry.example/memray:0.1.0-ray2.60.0-py311 .
#
# VARIANT picks the base: "-gpu" (CUDA runtime, faiss-gpu) for GPU workers, and for the head so that every node
# runs one environment (deploy/kuberay/rayjob.yaml does this), or "" (CPU only, faiss-cpu). RAY_VERSION must equal
# `ray==` in requirements/constraints.txt, and the tag carries it (tests/test_deploy.py checks both).
ARG RAY_VERSION=2.60.0
ARG VARIANT=-gpu
FROM rayproject/ray:${RAY_VERSION}-py311${VARIANT}
ARG RAY_VERSION
ARG VARIANT

# The checkout lives at /home/ray/memray (the image's user is `ray`); the job's entrypoint names files there.
WORKDIR /home/ray/memray
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users requirements/ requirements/
COPY --chown=ray:users memray/ memray/
COPY --chown=ray:users jobs/ jobs/
COPY --chown=ray:users models/ models/
COPY --chown=ray:users data/sample/ data/sample/

# Into the image's own Python (no virtualenv), every version from the constraints file, exactly one FAISS wheel.
RUN if [ "$VARIANT" = "-gpu" ]; then faiss=gpu; else faiss=cpu; fi \
    && python -m pip install --no-cache-dir -c requirements/constraints.txt -e ".[$faiss,cluster]" \
    && python -c "import memray, faiss, ray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

# Smoke test of a built image (the bundled demo, a local Ray inside the container):
#   docker run --rm IMAGE python jobs/audit.py --config jobs/configs/default.yaml --output /tmp/demo
