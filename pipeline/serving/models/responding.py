"""How a Python-backend model answers its requests, decoupled (streaming) or not.

Copied next to each model.py of a published repository (self-contained).
"""

from __future__ import annotations


def answer(requests, *, decoupled: bool, serve, pb_utils):
    """Answer each request with serve(request, sender); return what Triton expects from execute.

    serve returns the response, or None once it has streamed every piece through sender itself.
    An exception becomes an error response for that request alone; the model stays up.
    """
    responses = []
    for request in requests:
        sender = request.get_response_sender() if decoupled else None
        try:
            response = serve(request, sender)
        except Exception as exc:
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if sender is None:
            responses.append(response)
        elif response is None:  # streamed: every piece is out; close the stream
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:  # the answer or the error travels with the final flag: an ensemble waits for it
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    return None if decoupled else responses
