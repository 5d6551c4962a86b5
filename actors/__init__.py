"""conveyor's actors: one module per kind."""

# ``runtime`` first: its package imports the actors back (runtime.pipeline -> supervisor),
# so a process whose first import is an actor module (a spawned worker) must not enter
# that cycle from this side.
import runtime  # noqa: F401  (import order, see above)
from actors.downloader import Downloader
from actors.post_processor import PostProcessor
from actors.processor import Processor
from actors.state_keeper import StateKeeper
from actors.supervisor import Supervisor

__all__ = ["Downloader", "PostProcessor", "Processor", "StateKeeper", "Supervisor"]
