"""The gRPC server: job store (SQLite), scheduler and worker processes, servicer, auth. Server code only:
the clients are gansvc.clients, and what both ends need (the stubs, the conversions) is gansvc.api.

Read in this order: store (jobs and events) -> validation (spec messages) -> scheduler (devices, job states,
retries) -> executor (the interface that starts and watches an attempt; local_executor: worker processes
here) -> worker (the process that runs one job) -> servicer (the RPCs) -> server (wiring, health, TLS,
shutdown) -> cli and serve (`gansvc serve`). messages adds the conversions that read
the store's records to gansvc.api.convert's.
"""
