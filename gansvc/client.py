"""`from gansvc.client import GanClient`: the documented import of the Python client, kept for users and
plugins; the client itself is gansvc.clients.python."""

from gansvc.clients.python import *  # noqa: F403
from gansvc.clients.python import __all__  # noqa: F401
