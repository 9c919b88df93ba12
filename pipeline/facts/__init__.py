"""What is true before anything runs: the typed config, the precision formats, the GPU targets and the
serving container. Pure tables and models that everything else reads."""
