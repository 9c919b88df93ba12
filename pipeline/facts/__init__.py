"""What is true before anything runs: the typed config, the precision formats, the GPU targets, the
serving container and the layout of an artifact. Pure tables and models that everything else reads."""
