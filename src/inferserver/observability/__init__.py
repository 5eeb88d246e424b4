"""What the process tells its operator: readiness, metrics and logs."""
