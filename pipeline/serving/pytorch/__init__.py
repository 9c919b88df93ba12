"""Serving the PyTorch backend's builds: Triton's llmapi model and trtllm-serve, over one checkpoint.

release.py        what publish writes: the llmapi repository, the checkpoint, the trtllm-serve bundle
llm.py            the CPU's stand-in for tensorrt_llm.LLM (the reference runtime over the checkpoint)
openai_server.py  the CPU's stand-in for trtllm-serve (OpenAI-compatible, aiohttp)
smoke.py          both consumers served on the CPU and driven by real clients
"""
