"""`/metrics`: what the API shows of the service, in Prometheus' text format (prometheus_client).

Everything is read at scrape time from ListJobs (every page), so the numbers are the server's own: jobs by
state and kind, the queue's length, each running job's images per second, worker deaths (attempts beyond
each job's first: a worker that died, or a server restart, started it again from its last checkpoint), and
the wall time of finished evaluation jobs.
"""

from __future__ import annotations

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from gansvc.api.convert import KIND_TO_PROTO, PROTO_TO_KIND, pb, state_name
from gansvc.runtime import registry

PAGE = 500  # ListJobs' largest page


class ServiceCollector(Collector):
    """Collects the service's numbers through a GanClient at each scrape."""

    def __init__(self, client):
        self.client = client

    def collect(self):
        """Yield the metric families (gansvc_up 0 and nothing else when the server does not answer)."""
        up = GaugeMetricFamily("gansvc_up", "1 when the gansvc server answered ListJobs at this scrape")
        try:
            jobs = list(self.client.list_jobs(page_size=PAGE))
        except grpc.RpcError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        by_state = GaugeMetricFamily("gansvc_jobs", "jobs by state and kind", labels=["state", "kind"])
        counts = {(s, k): 0 for s in registry.JOB_STATES for k in KIND_TO_PROTO}
        rates = GaugeMetricFamily("gansvc_job_images_per_second", "training throughput of each running job",
                                  labels=["job", "kind"])  # fmt: skip
        deaths = CounterMetricFamily("gansvc_worker_deaths", "worker starts beyond each job's first (the worker "
                                     "died or the server restarted; the job resumed from its last checkpoint)")
        evaluation = SummaryMetricFamily("gansvc_evaluation_seconds", "wall time of finished evaluation jobs")
        died = 0
        eval_count, eval_sum = 0, 0.0
        for job in jobs:
            state, kind = state_name(job.state), PROTO_TO_KIND.get(job.kind, "")
            counts[state, kind] = counts.get((state, kind), 0) + 1
            died += max(job.attempts - 1, 0)
            if state == "RUNNING" and job.HasField("progress"):
                rates.add_metric([job.id, kind], job.progress.images_per_sec)
            if kind == "evaluation" and job.state == pb.JOB_STATE_SUCCEEDED and job.started_at.seconds:
                eval_count += 1
                eval_sum += max(_between(job.started_at, job.finished_at), 0.0)
        for (state, kind), count in sorted(counts.items()):
            by_state.add_metric([state, kind], count)
        queue = GaugeMetricFamily("gansvc_queue_length", "jobs waiting to start (QUEUED)")
        queue.add_metric([], sum(n for (state, _), n in counts.items() if state == "QUEUED"))
        deaths.add_metric([], died)
        evaluation.add_metric([], count_value=eval_count, sum_value=eval_sum)
        yield from (by_state, queue, rates, deaths, evaluation)


def _between(start, end) -> float:
    """Return end - start in seconds (whole seconds first: epoch seconds as floats keep only ~0.2 us)."""
    return (end.seconds - start.seconds) + (end.nanos - start.nanos) / 1e9


def make_registry(client) -> CollectorRegistry:
    """Return a registry of its own (not the process-wide default) holding the service collector."""
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(ServiceCollector(client))
    return collectors
