"""Running the task graph: a pure scheduler, and task runners behind one protocol.

    scheduler.Schedule     which tasks may start, given which have passed or stopped (pure)
    spec.TaskSpec          everything a task needs to run anywhere (serialisable)
    spec.run_task          runs one spec into the store and commits it (the worker's side)
    events                 what a running task tells the driver (messages, progress), as data
    inprocess              the local runner: one task at a time, in this process
    ray_cluster            the Ray runner: every ready task at once, each on a node it fits
    resources              what a task asks of a node (CPUs; a GPU of its target's type)

The driver (pipeline.execution.driver.execute) holds the work dir's lock, keys and verifies
artifacts, and is the only one to write what tasks share (build's engines/ links).
"""
