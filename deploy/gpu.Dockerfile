# citer-cloud, GPU image: the vLLM backend serving a Hugging Face model folder on NVIDIA GPUs.
#   docker build -f deploy/gpu.Dockerfile -t citer-cloud:gpu .
#   docker run --gpus all --ipc=host -p 50051:50051 -v /srv/models:/models:ro citer-cloud:gpu \
#       --model /models/Qwen2.5-Coder-7B-Instruct --tensor-parallel-size 1
# vLLM's own image brings CUDA, PyTorch and vLLM 0.32.0 (the version the vllm extra pins); we add the service.
# llama.cpp comes along as a core dependency (a CPU build), so the image can also serve a GGUF with --backend llama.cpp.
FROM vllm/vllm-openai:v0.32.0
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY client client
COPY cloud cloud
COPY bench bench
COPY export export
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    pip install --no-cache-dir ".[vllm]" && rm -rf /src
WORKDIR /
EXPOSE 50051 9090
ENV CITER_CLOUD_HOST=0.0.0.0 CITER_CLOUD_PORT=50051 CITER_CLOUD_BACKEND=vllm
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s CMD ["citer-cloud", "health", "127.0.0.1:50051"]
ENTRYPOINT ["citer-cloud", "serve"]
