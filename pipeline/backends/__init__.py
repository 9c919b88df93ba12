"""The runtimes the pipeline builds for: TensorRT-LLM 1.2.1 engines (trtllm_engine/) and the runners
that load a built engine on either target (runners.py)."""
