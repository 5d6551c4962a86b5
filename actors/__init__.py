"""conveyor's actors: one module per kind."""

from actors.downloader import Downloader
from actors.post_processor import PostProcessor
from actors.processor import Processor
from actors.state_keeper import StateKeeper
from actors.supervisor import Supervisor

__conveyor_package__ = True
"""Marks this package as conveyor's (``runtime`` checks it: see ``_check_own_packages``)."""

__all__ = ["Downloader", "PostProcessor", "Processor", "StateKeeper", "Supervisor"]
