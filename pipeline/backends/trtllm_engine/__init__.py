"""The TensorRT-LLM 1.2.1 boundary: build argv planning, the environment probe and preflight.

Nothing here imports tensorrt_llm: the build runs `trtllm-build` in a child
process (so GPU memory is surely freed and a crash cannot take the pipeline
with it), and the probe asks a child Python what is installed.
"""

from __future__ import annotations
