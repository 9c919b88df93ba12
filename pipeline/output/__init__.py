"""What a person or a CI job reads: the console, the summary tables and the run report files."""
