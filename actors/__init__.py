"""conveyor's actors: one module per kind."""

from actors.downloader import Downloader
from actors.post_processor import PostProcessor
from actors.processor import Processor
from actors.state_keeper import StateKeeper
from actors.supervisor import Supervisor

__all__ = ["Downloader", "PostProcessor", "Processor", "StateKeeper", "Supervisor"]
