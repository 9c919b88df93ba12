"""Pure planning: the task graph and the memory and speed plan of each profile."""
