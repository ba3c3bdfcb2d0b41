"""What both ends of the gRPC API need beside the generated stubs: the stub import and the conversions
(state and kind names, timestamps, training settings, typed events -> JobEvent) in `convert`; the metric
downsampling both ends use (GetMetrics max_points) in `downsample`.

It imports no server module and no client module: the server (gansvc.service) and the clients
(gansvc.clients) both stand on it.
"""
