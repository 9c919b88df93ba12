"""The verbs (`run`, `verify`, `smoke`, ...) as library functions; the CLI only parses and prints."""
