"""The scheduler: picks queued sessions, places them on GPUs, stages their files and hands them to the runner."""
