"""What a server offers: the GetServerInfo RPC's answer (`server_info`; `gansvc info` prints it, see info_cli).

Built-in and installed (plugin) models, data sets, losses and extractors come from the registry; a
plugin data set's size, shape and classes are unknown until its factory runs, which happens when a client
asks (`probe_datasets`, `gansvc info --probe-datasets`) or a job on it is submitted, and then once per
installed version of its package (gansvc.service.dataset_probe).
"""

from __future__ import annotations

import functools
import re

from gansvc.runtime import registry
from gansvc.service.devices import local_node_address
from gansvc.service.dataset_probe import probe_dataset, probe_problems


# ---------------------------------------------------------------------- server side
def server_info(pool, roots, max_attempts: int, running_jobs, probe_datasets: bool = False):
    """Return the ServerInfo message of a server with this device pool, data roots and limits.

    `running_jobs`: the RUNNING JobRecords (their `device` label says what they hold).
    """
    import torch

    import gansvc
    from gansvc.api.convert import pb, struct

    info = pb.ServerInfo(version=gansvc.__version__, losses=list(registry.loss_names()), max_attempts=max_attempts,
                         precisions=list(registry.precision_names()), torch_version=torch.__version__,
                         data_roots=[str(r) for r in roots.roots],
                         cuda_available=torch.cuda.is_available())  # fmt: skip
    for name in registry.model_names():
        model = registry.model_info(name)
        info.models.add(name=name, description=model.description, plugin=model.plugin,
                        image_sizes=list(model.image_sizes or ()))  # fmt: skip
    for name in registry.dataset_names():
        info.datasets.add().CopyFrom(_dataset_offer(pb, name, probe_datasets))
    for name in registry.extractor_names():
        extractor = registry.extractor_info(name)
        info.extractors.add(name=name, description=extractor.description, plugin=extractor.plugin)
    for kind, name, dist in registry.PLUGIN_CONFLICTS:
        info.plugin_problems.add(kind=kind, name=name, message=f"{dist}: the name is taken (or not allowed); left out")
    for name, problem in sorted(probe_problems().items()):
        info.plugin_problems.add(kind="datasets", name=name, message=problem)
    _devices(info, pool, running_jobs)
    info.cpu_capability, info.cuda_architectures[:] = kernels()
    status = selftest_status()
    if status is not None:
        info.kernel_selftest.CopyFrom(struct(status))
    training_fields(info.training_fields)
    return info


def training_fields(out) -> None:
    """Add every TrainSpec field, with what its `setting` declares, to `out` (ServerInfo.training_fields)."""
    import dataclasses

    from gansvc.api.convert import struct
    from gansvc.train.spec import TrainSpec

    for spec_field in dataclasses.fields(TrainSpec):
        meta = spec_field.metadata
        kind = spec_field.type if isinstance(spec_field.type, str) else spec_field.type.__name__
        entry = out.add(name=spec_field.name, type=kind, help=meta.get("help", ""),
                        choices=list(meta["choices"]() if meta.get("choices") else ()))  # fmt: skip
        # the declared default ("" for loss: the model's own), not a resolved TrainSpec()'s ("bce" for dcgan);
        # a Value holds one plain value: wrap it in a Struct and take it back out
        default = spec_field.default if spec_field.default is not dataclasses.MISSING else spec_field.default_factory()
        entry.default.CopyFrom(struct({"v": default}).fields["v"])
        if meta.get("min") is not None:
            entry.min = meta["min"]
        if meta.get("max") is not None:
            entry.max = meta["max"]


def _dataset_offer(pb, name: str, probe: bool):
    data = registry.dataset_info(name)
    offer = pb.DatasetOffer(name=name, description=data.description, plugin=data.plugin, kind=data.kind,
                            shape=list(data.shape), train_size=_size(data.size("train")),
                            test_size=_size(data.size("test")),
                            num_classes=-1 if data.num_classes is None else data.num_classes)  # fmt: skip
    if data.plugin and probe:
        found = probe_dataset(name)
        if "problem" not in found:
            offer.shape[:] = found["shape"]
            offer.train_size = found["size"]
            offer.num_classes = found["num_classes"]
            offer.class_names[:] = found["class_names"]
    return offer


def _size(value) -> int:
    return -1 if value is None else int(value)


def _devices(info, pool, running_jobs) -> None:
    """Add the pool's devices, each with the running jobs that hold it, and its nodes (ServerInfo.nodes)."""
    if hasattr(pool, "add_nodes"):  # a cluster (service/ray_executor.py): its nodes and their devices
        pool.add_devices(info, running_jobs)
        pool.add_nodes(info, running_jobs)
        return
    holders: dict[str, list[str]] = {}
    for job in running_jobs:
        for label in (job.device or "").split(","):
            if label:
                holders.setdefault(label.strip(), []).append(job.id)
    cpu_jobs = holders.get("cpu", [])
    info.devices.add(name="cpu", description=f"{pool.cpu_count} cores", busy=len(cpu_jobs) >= pool.cpu_slots,
                     jobs=cpu_jobs, slots=pool.cpu_slots,
                     free_slots=max(0, pool.cpu_slots - len(cpu_jobs)))  # fmt: skip
    for index in pool.gpus:
        label = f"cuda:{index}"
        jobs = holders.get(label, [])
        info.devices.add(name=label, description=_gpu_description(index), busy=bool(jobs), jobs=jobs, slots=1,
                         free_slots=0 if jobs else 1)  # fmt: skip
    # the local backend is one node: this machine, with the devices above
    address = local_node_address()
    info.nodes.add(id=address, address=address, alive=True, devices=list(info.devices))


def _gpu_description(index: int) -> str:
    import torch

    try:
        props = torch.cuda.get_device_properties(index)
    except Exception as error:  # noqa: BLE001 - a GPU the pool names but this process cannot see
        return f"unavailable ({type(error).__name__})"
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}"


def kernels() -> tuple[str, list[str]]:
    """Return (the CPU kernels' capability, the CUDA architectures compiled into gansvc._C)."""
    from gansvc import ops

    module = ops.load_extension()
    if module is None:
        return ops.cpu_capability(), []
    if hasattr(module, "cuda_architectures"):  # where the extension says it itself
        return ops.cpu_capability(), sorted(module.cuda_architectures())
    return ops.cpu_capability(), list(_architectures_in(module.__file__)) if module.cuda_compiled else []


@functools.cache
def _architectures_in(path: str) -> tuple[str, ...]:
    """Return the sm_XY targets named in the extension's embedded CUDA binaries (read once)."""
    with open(path, "rb") as f:
        found = set(re.findall(rb"sm_[0-9]{2,3}a?", f.read()))
    return tuple(sorted(name.decode() for name in found))


def selftest_status() -> dict | None:
    """Return gansvc.ops.selftest.status() where that module exists (None otherwise, or when it fails)."""
    try:
        from gansvc.ops import selftest
    except ImportError:
        return None
    try:
        return dict(selftest.status())
    except Exception as error:  # noqa: BLE001 - the info call must answer anyway
        return {"error": f"{type(error).__name__}: {error}"}
