"""The gRPC service: job store (SQLite), scheduler and worker processes, servicer, auth.

Read in this order: store (jobs and events) -> validation (spec messages) -> scheduler (devices, worker
processes, job states) -> worker (the process that runs one job) -> servicer (the RPCs) -> server
(wiring, health, TLS, shutdown) -> cli (cli_args, serve, commands, render). The events are
gansvc.runtime.events; convert turns them (and states, settings) into messages without the store,
for the client (gansvc.client) as for the server.
"""
