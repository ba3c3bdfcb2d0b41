"""The layer beneath train and service: registry of names, run-directory layout, events, processes."""
