"""Load a profile's options once with TensorRT-LLM's LLM API and report what the runtime made of them.

Run as a child process (`python -m pipeline.backends.trtllm_pytorch.load ENGINE_DIR REPORT`) by the
build, for the reasons trtllm-build runs in one: its GPU memory is surely freed when it exits, its
output lands in the build's log, the command is recorded and can be rerun by hand, and the
pipeline's own process never imports tensorrt_llm.

`LLM(model, **options)` validates the options as TorchLlmArgs (extra fields forbidden), loads the
checkpoint and sizes the KV cache; `llm.args` holds the validated arguments (CudaGraphConfig's
validator sorts batch_sizes and sets max_batch_size to their maximum); `llm.shutdown()` frees it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipeline.backends.trtllm_pytorch.options import LLM_API_FIELDS, OPTIONS_FILE


def resolved(args: Any, options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The runtime's values of the options that were set (nested models by their own fields)."""
    out = {}
    for name, value in options.items():
        got = getattr(args, name)
        if isinstance(value, dict):
            got = resolved(got, value, name)
        out[name] = got
    assert set(out) <= LLM_API_FIELDS[prefix]
    return out


def load_once(engine_dir: Path) -> dict[str, Any]:
    from tensorrt_llm import LLM, __version__

    options = json.loads((engine_dir / OPTIONS_FILE).read_text())
    llm = LLM(model=str(engine_dir), **options)
    try:
        return {"tensorrt_llm": __version__, "options": resolved(llm.args, options)}
    finally:
        llm.shutdown()


def main(argv: list[str]) -> int:
    engine_dir, report_path = Path(argv[0]), Path(argv[1])
    report_path.write_text(json.dumps(load_once(engine_dir), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
