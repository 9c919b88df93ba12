"""trtllm-pipeline: Hugging Face LLM -> INT8 TensorRT-LLM engines -> gated Triton model repository."""

__version__ = "0.1.0"
