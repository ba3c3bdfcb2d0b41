"""Code that only talks to a gansvc server, through the API: the Python client (`python`, also importable
as gansvc.client), the client commands of `gansvc` (`cli`, `cli_args`, `commands`, `render`, `info_cli`,
`sweep_cli`).

Nothing here imports gansvc.service (tests/test_import_graph.py holds it): a client needs the stubs and
gansvc.api, never the server's store, scheduler or workers.
"""
