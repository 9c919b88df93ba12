"""The project's own Triton Python-backend models, shipped as package data.

Each folder holds one model's `model.py`, copied into `<model>/1/` of a published
repository. The helper modules here (`modelargs`, `offvalues`, `responding`, `tensornames`,
`textcodec`: serving.repository.HELPERS) are copied next to each of them: the
models must run in the serving container, where this package is not installed,
so they import nothing from `pipeline` (except the CPU reference engine model,
which runs the project's own runtime and exists only for the reference
backend). The smoke check and the bench import `textcodec` and `tensornames`
from this package.
"""
