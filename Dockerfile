# tulu-kit on a CUDA GPU node: torch first, then the package with its GPU extras (see pyproject.toml; the
# package lists are checked against it by tests/test_packaging.py). Build and run:
#   docker build -t tulu-kit .
#   docker run --gpus all -it -v $PWD/runs:/opt/tulu-kit/runs tulu-kit tulu-kit run recipes/tulu3/sft_8b.yaml
# With vLLM (fast eval generation, GRPO's vllm-serve), the `vllm` target:
#   docker build --target vllm -t tulu-kit:vllm .
#   docker run --gpus all -it tulu-kit:vllm tulu-kit eval mmlu --model allenai/Llama-3.1-Tulu-3-8B --backend vllm
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04 AS gpu

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/opt/tulu-kit/.cache/huggingface TORCH_EXTENSIONS_DIR=/opt/tulu-kit/.cache/torch_extensions
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev git build-essential ninja-build make \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/tulu-kit

# torch first (the CUDA build of the pinned version), then everything else under the same constraints.
COPY constraints.txt ./
RUN pip install -U pip && pip install torch==2.13.0
COPY . .
RUN PIP_CONSTRAINT=constraints.txt pip install -e ".[quant,deepspeed,eval,merge,dev]" \
    && PIP_CONSTRAINT=constraints.txt pip install --no-build-isolation "flash-attn>=2.8" "liger-kernel>=0.8"
RUN python -m ipykernel install --sys-prefix --name python3
CMD ["tulu-kit", "--help"]

# vLLM beside the same pins (vllm 0.30 pins torch 2.13.0, the build installed above): the `vllm` extra
FROM gpu AS vllm
RUN PIP_CONSTRAINT=constraints.txt pip install -e ".[vllm]" && python -c "import vllm, torch; print(vllm.__version__, torch.__version__)"

# the default target stays the image without vLLM
FROM gpu
