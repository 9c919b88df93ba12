"""The TensorRT-LLM 1.2.1 boundary: build argv planning, the environment probe and preflight.

Nothing here imports tensorrt_llm: the build runs `trtllm-build` in a child
process (so GPU memory is surely freed and a crash cannot take the pipeline
with it), and the probe asks a child Python what is installed.
"""

from __future__ import annotations

from pipeline.container import SERVING_CONTAINER

# The build runs in the serving container: its TensorRT-LLM is the one the pipeline is written for.
REQUIRED_VERSION = SERVING_CONTAINER.tensorrt_llm
CONTAINER = SERVING_CONTAINER.tag
