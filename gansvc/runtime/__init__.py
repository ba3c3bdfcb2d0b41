"""The layer beneath train and service: event schema, process toolkit, run-directory layout, registry."""
