# ray-tf-serve on the official Ray image, with the default models baked in.
#   CPU: docker build -t ray-tf-serve:0.1.0 .
#   GPU: docker build -t ray-tf-serve:0.1.0-gpu \
#          --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu --build-arg EXTRAS=gpu .
# deploy/kuberay/*.yaml run these images; `serve run configs/config.yaml` works in them too.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}
ARG EXTRAS=""

# The configs' relative model paths start here (the manifests' workingDir).
WORKDIR /home/ray/app

# Dependencies first: they change less often than the code.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users deployments ./deployments
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"
# Serve starts this launcher as its HAProxy (deployments/haproxy.py); the build
# fails here if pip put it elsewhere.
ENV RAY_SERVE_HAPROXY_BINARY_PATH=/home/ray/anaconda3/bin/ray-tf-serve-haproxy
RUN test -x "$RAY_SERVE_HAPROXY_BINARY_PATH"

# The default models are committed (built by models/build_*.py), labels beside them.
COPY --chown=ray:users models ./models
COPY --chown=ray:users configs ./configs

# The serving-path settings `make serve` uses (configs/server.env).
ENV RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
    RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_GRPC_MAX_MESSAGE_SIZE=17825792 \
    RAY_SERVE_HAPROXY_RETRY_ON="conn-failure empty-response" \
    RAY_SERVE_HAPROXY_RETRIES=1 \
    RAY_SERVE_HAPROXY_TUNE_BUFSIZE=1048576

# TF Serving's image's conventions (deployments/cli.py, docs/migrating.md): the model at
# ${MODEL_BASE_PATH}/${MODEL_NAME}, gRPC on 8500, REST on 8501, the container's arguments
# appended as tensorflow_model_server flags:
#   docker run -p 8501:8501 -v "$PWD/half_plus_two:/models/half_plus_two" \
#     -e MODEL_NAME=half_plus_two ray-tf-serve:0.1.0
# Supervised (deployments/run.py): `docker stop` leaves no HAProxy behind.
# The YAML way: docker run ... --entrypoint python ray-tf-serve:0.1.0 -m deployments.run configs/config.yaml
ENV MODEL_NAME=model \
    MODEL_BASE_PATH=/models
EXPOSE 8500 8501 8265 8080
ENTRYPOINT ["python", "-c", "import sys; from deployments.cli import docker_main; sys.exit(docker_main())"]
