"""The command-line options of the client commands `gansvc submit | watch | jobs | samples | cancel | download |
upload | health` (and the connection options of `info` and `sweep`); `serve`'s are in gansvc.service.cli."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gansvc.runtime import registry

DEFAULT_SERVER = registry.DEFAULT_ADDRESS
CLIENT_COMMANDS = ("submit", "watch", "jobs", "samples", "cancel", "download", "upload", "health")


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the options of client command `name` to its parser (a name it does not know gets the connection options)."""
    _client_arguments(parser)
    if name == "submit":
        _submit_arguments(parser)
    elif name == "watch":
        parser.add_argument("job", help="job id")
        parser.add_argument("--after", type=int, default=0, metavar="N", help="start after event N (default: all)")
        parser.add_argument("--json", action="store_true", help="print each event as one JSON line, no bar")
    elif name == "jobs":
        parser.add_argument(
            "--state",
            action="append",
            default=[],
            metavar="STATE",
            help="only jobs in this state (repeatable): queued, running, succeeded, failed, cancelled",
        )
        parser.add_argument("--kind", choices=("training", "evaluation", "sweep"), help="only this kind of job")
        parser.add_argument("--limit", type=int, default=20, help="at most this many jobs, newest first (default 20)")
        parser.add_argument("--json", action="store_true", help="print the jobs as JSON lines")
    elif name == "samples":
        parser.add_argument("job", help="job id")
        parser.add_argument("-o", "--output", required=True, type=Path, help="PNG file to write")
        parser.add_argument("--step", type=int, default=0, help="a checkpoint / grid step (default: the latest)")
        parser.add_argument("--seed", type=int, help="generate fresh images with this noise seed")
        parser.add_argument("--count", type=int, help="generate this many images (default 64)")
        parser.add_argument("--nrow", type=int, default=0, help="images per row of a generated grid")
        parser.add_argument("--best", action="store_true", help="generate from the job's best generator instead")
        parser.add_argument("--class", dest="class_label", type=int, metavar="K",
                            help="a conditional run's images all of class K")  # fmt: skip
        parser.add_argument(
            "--tensor", type=Path, metavar="FILE.npy", help="also save the raw images (float32, [-1, 1])"
        )
        # by seed (issue 21): the same images as `gansvc sample --seeds / --truncation / --interpolate` locally
        parser.add_argument("--seeds", default="", metavar="LIST", help="one image per seed, e.g. 0-63 or 1,5,9")
        parser.add_argument("--truncation", type=float, metavar="PSI", help="truncation psi in (0, 1] (1 = none)")
        parser.add_argument("--interpolate", metavar="A,B", help="slerp between seeds A and B: a grid and an animation")
        parser.add_argument("--frames", type=int, default=0, help="frames of --interpolate (default 16)")
        parser.add_argument("--animation", type=Path, metavar="FILE", help="--interpolate's .gif / .webp (default: "
                            "-o with .gif)")  # fmt: skip
        parser.add_argument("--per-class", action="store_true", help="every seed in every class, a row per class")
    elif name == "cancel":
        parser.add_argument("job", help="job id")
        parser.add_argument(
            "--no-wait", action="store_true", help="return at once instead of waiting for the job to stop"
        )
    elif name == "download":
        parser.add_argument("job", help="job id")
        parser.add_argument("name", nargs="?", help="artifact, e.g. generator.pt or checkpoints/latest.pt")
        parser.add_argument("-o", "--output", type=Path, help="file to write (default: the artifact's file name)")
        parser.add_argument("--list", action="store_true", help="list the job's artifacts instead")
    elif name == "upload":
        parser.add_argument("file", type=Path, help="a gansvc checkpoint (a run's checkpoints/*.pt)")
        parser.add_argument("--chunk-mb", type=float, default=1.0, help="MiB per chunk (default 1)")
        parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    elif name == "health":
        parser.add_argument("--service", default="", help="service name to ask about (default: the server)")


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=os.environ.get("GANSVC_SERVER", DEFAULT_SERVER),
        metavar="HOST:PORT",
        help=f"the service (default $GANSVC_SERVER or {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        default=os.environ.get("GANSVC_TOKEN_FILE") or None,
        help="file whose first line is the bearer token (default $GANSVC_TOKEN_FILE, or the token in $GANSVC_TOKEN)",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        default=os.environ.get("GANSVC_TLS_CA") or None,
        help="CA certificate (PEM) to verify the server with: use TLS (default $GANSVC_TLS_CA)",
    )
    group.add_argument(
        "--tls-server-name",
        default=os.environ.get("GANSVC_TLS_SERVER_NAME") or None,
        help="name the server certificate must carry, if not its address (default $GANSVC_TLS_SERVER_NAME)",
    )
    group.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default 60)")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _json_object(text: str) -> dict:
    """argparse type of model_args / dataset_args: a JSON object."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    """argparse type of --classes: comma-separated integers."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class numbers, got {text!r}") from None


def _resamples(text: str) -> int:
    """argparse type of --bootstrap: a count >= 0 (the server holds the upper bound)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of resamples >= 0 (0 = none), got {text!r}")
    return value


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    from google.protobuf.descriptor import FieldDescriptor

    from gansvc.api.convert import training_spec_fields

    parser.add_argument("--spec", type=Path, help="training spec file (.json or .toml); flags override its values")
    parser.add_argument("--request-id", help="makes a retried submit return the same job")
    parser.add_argument("--watch", action="store_true", help="follow the job until it ends (as `gansvc watch`)")
    group = parser.add_argument_group("training settings (TrainSpec fields; unset ones take the trainer's defaults)")
    types = {FieldDescriptor.TYPE_STRING: str, FieldDescriptor.TYPE_DOUBLE: float, FieldDescriptor.TYPE_FLOAT: float,
             FieldDescriptor.TYPE_MESSAGE: _json_object}  # fmt: skip
    for name, descriptor in training_spec_fields().items():
        if descriptor.type == FieldDescriptor.TYPE_BOOL:
            group.add_argument(_option(name), dest=f"spec_{name}", action=argparse.BooleanOptionalAction, default=None)
        else:
            group.add_argument(
                _option(name),
                dest=f"spec_{name}",
                type=types.get(descriptor.type, int),
                default=None,
                metavar=name.upper(),
            )
    evaluation = parser.add_argument_group("evaluation instead of training (uses --data-root, --seed, --device too)")
    evaluation.add_argument("--evaluate", metavar="JOB",
                            help="score this training job's checkpoint (FID, IS, KID; more below)")  # fmt: skip
    evaluation.add_argument(
        "--evaluate-images",
        type=Path,
        metavar="PATH",
        help="score these images: a folder of PNGs or a .npy [N, C, H, W] file",
    )
    evaluation.add_argument("--step", type=int, default=0, help="checkpoint step of --evaluate (default: the latest)")
    evaluation.add_argument("--best", action="store_true", help="score --evaluate's best checkpoint instead of --step")
    evaluation.add_argument("--classes", type=_int_list, default=(), metavar="K,K,...",
                            help="a conditional --evaluate checkpoint generates these classes in turn (scored per "
                                 "class too)")  # fmt: skip
    evaluation.add_argument("--sample-labels", type=Path, metavar="FILE.npy",
                            help="the class of each --evaluate-images image (an int .npy [N]; per-class scores)")
    evaluation.add_argument("--real", default="", help="reference data set and split (default fashion-mnist:test)")
    extractors = " | ".join(registry.extractor_names())
    evaluation.add_argument("--extractor", default="",
                            help=f"{extractors}, or a plugin's (default {registry.DEFAULT_EXTRACTOR})")  # fmt: skip
    evaluation.add_argument("--inception-weights", default="", help="Inception weights file under a data root")
    evaluation.add_argument("--num-samples", type=int, help="images generated from the checkpoint (default 5000)")
    evaluation.add_argument("--num-real", type=int, help="reference images used (default: the whole split)")
    evaluation.add_argument("--precision-recall", action="store_true",
                            help="also precision, recall, density and coverage (k = 3) on the extractor's features")
    evaluation.add_argument("--bootstrap", type=_resamples, default=0, metavar="N",
                            help="a 95%% confidence interval of the FID from N bootstrap resamples (default 0: none)")
