# citer-cloud, CPU image: the llama.cpp backend serving a GGUF model.
#   docker build -f deploy/cpu.Dockerfile -t citer-cloud:cpu .
#   docker run -p 50051:50051 -v ~/.cache/citer-edge/models:/models:ro citer-cloud:cpu \
#       --model /models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
# llama.cpp is built for x86-64 with AVX2 (GGML_NATIVE=OFF), not for the build machine's CPU: the image must run on
# whichever server it lands on. On CPUs with AMX, --llama-extra-buffers auto keeps the AMX buffers off (see README).
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY client client
COPY cloud cloud
COPY bench bench
COPY export export
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 citer
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER citer
EXPOSE 50051 9090
ENV CITER_CLOUD_HOST=0.0.0.0 CITER_CLOUD_PORT=50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s CMD ["citer-cloud", "health", "127.0.0.1:50051"]
ENTRYPOINT ["citer-cloud", "serve"]
