"""Infrastructure every layer stands on: errors, atomic writes, hashing, manifests, the artifact
store, locks, paths, the external-tool runner and the reporter protocol."""
