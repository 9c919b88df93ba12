"""The trtllm-pipeline command line: options in, library calls (pipeline.commands), output out."""

from pipeline.cli.main import main

__all__ = ["main"]
