"""How a Python-backend model answers its requests, decoupled (streaming) or not.

Copied next to each model.py of a published repository (self-contained).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tensornames import BATCH_INDEX  # the helper copied beside this one


def answer(requests, *, decoupled: bool, serve, pb_utils, pool=None):
    """Answer each request with serve(request, sender); return what Triton expects from execute.

    serve returns the response, or None once it has streamed every piece through sender itself.
    An exception becomes an error response for that request alone; the model stays up.
    With a thread pool (decoupled only), each request is served on a worker and execute returns at
    once, so one instance serves many requests at a time (a decoupled model may answer later, from
    any thread, through the request's sender).
    """
    responses = []
    for request in requests:
        sender = request.get_response_sender() if decoupled else None
        if pool is not None and sender is not None:
            pool.submit(_respond, request, sender, serve, pb_utils)
        else:
            responses.append(_respond(request, sender, serve, pb_utils))
    return None if decoupled else responses


class Responder:
    """A model's answering: `answer` with, when decoupled, a pool of `workers` threads (and its end)."""

    def __init__(self, *, decoupled: bool, serve, pb_utils, workers: int) -> None:
        self.decoupled, self.serve, self.pb_utils = decoupled, serve, pb_utils
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers)) if decoupled else None

    def execute(self, requests):
        return answer(
            requests, decoupled=self.decoupled, serve=self.serve, pb_utils=self.pb_utils, pool=self.pool
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _respond(request, sender, serve, pb_utils):
    try:
        response = serve(request, sender)
    except Exception as exc:
        response = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
    if sender is None:
        return response
    if response is None:  # streamed: every piece is out; close the stream
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    else:  # the answer or the error travels with the final flag: an ensemble waits for it
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    return None


def batch_index_tensor(pb_utils, index: int):
    """The TensorRT-LLM backend answers a request of batch B > 1 with B responses of batch 1, in
    completion order, each naming its prompt in this output (when declared and requested)."""
    import numpy as np

    return pb_utils.Tensor(BATCH_INDEX, np.array([[index]], dtype=np.int32))
