"""`gansvc web`: the dashboard, a Starlette app on uvicorn that is one more client of the gRPC API.

It reads and acts only through gansvc.clients.python.GanClient (so it works against any server the CLI
reaches, with its token and TLS), and ships its pages and scripts in gansvc/web/static (no CDN).
Modules: cli (the command), app (routes), relay (gRPC streams to server-sent events), shapes (messages
as JSON), series (downsampling that keeps minima and maxima), prometheus (/metrics).
"""
