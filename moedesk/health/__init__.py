"""Health alerts: rules from the seeds evaluated on metrics as they arrive."""
