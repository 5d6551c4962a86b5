"""The PostProcessor: the single point where every terminal outcome is recorded.

Exactly one runs. It calls the configured ``BasePostProcessor`` for each outcome, in the
order the StateKeeper sends them, and confirms with ``PostProcessed``; the StateKeeper
commits the terminal status only after that confirmation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.child import ChildActor, ChildContext
from actors.control import tell
from messages import Outcome, PostProcessed, PostProcessFailed
from messages.control import Batch, RecordOutcomes, Started
from runtime.core.logs import get_logger
from runtime.core.plugins import BasePostProcessor, PluginContext, call_batch, failure

__all__ = ["PostProcessor"]

log = get_logger("post_processor")


class PostProcessor(ChildActor):
    """The one post-processor instance."""

    kind = "post_processor"

    def __init__(
        self,
        *,
        child: ChildContext,
        build: Callable[[], BasePostProcessor],
        context: PluginContext,
    ) -> None:
        """``build`` makes the plugin, in the actor's thread, where it will run; it is
        opened there too. A failure of either is answered to ``Started`` (an unwritable
        manifest fails the start)."""
        super().__init__(child=child)
        self.build = build
        self.plugin: BasePostProcessor | None = None
        self.context = context
        self.start_error: Exception | None = None

    def on_start(self) -> None:
        """Build and open the plugin."""
        try:
            plugin = self.build()
            plugin.open(self.context)
        except Exception as exc:  # noqa: BLE001 - the supervisor decides what it means
            self.start_error = exc
        else:
            self.plugin = plugin

    def on_stop(self) -> None:
        """Close the plugin (flush the manifest)."""
        if self.plugin is not None:
            self.plugin.close()
        super().on_stop()

    def cleanup(self) -> None:
        """Close the plugin after a crash, so a restarted one can reopen it."""
        try:
            if self.plugin is not None:
                self.plugin.close()
        except Exception as exc:  # noqa: BLE001 - already failing; keep the first error
            log.warning("closing the post-processor failed", error=str(exc))

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        if self.plugin is None:
            if isinstance(message, Started):
                return self.start_error
            raise RuntimeError(f"the post-processor could not be built: {self.start_error}")
        match message:
            case Started():
                return None
            case Outcome():
                tell(self.state_keeper, self._record_batch((message,))[0])
            case RecordOutcomes(outcomes=outcomes):  # a block, answered with one batch
                tell(self.state_keeper, Batch(messages=tuple(self._record_batch(outcomes))))
            case _:
                log.warning("unexpected message", actor=self.worker, message=repr(message))
        return None

    def _record_batch(
        self, outcomes: tuple[Outcome, ...]
    ) -> list[PostProcessed | PostProcessFailed]:
        """Record a block through ``post_process_batch``, then ``flush``; what the plugin
        raises for one outcome fails that item, a failed flush the whole block."""
        assert self.plugin is not None
        errors = call_batch(self.plugin.post_process_batch, outcomes, "outcomes")
        replies: list[PostProcessed | PostProcessFailed] = []
        for outcome, error in zip(outcomes, errors, strict=True):
            if error is None:
                replies.append(PostProcessed(item_id=outcome.id, status=outcome.status))
                continue
            text = failure(error)
            log.warning("post-processor failed", item_id=outcome.id, error=text)
            replies.append(PostProcessFailed(item_id=outcome.id, error=text))
        try:
            self.plugin.flush()
        except Exception as exc:  # noqa: BLE001 - a plugin's failure is the items', not ours
            text = f"flush failed: {failure(exc)}"
            log.warning("post-processor flush failed", error=text)
            return [PostProcessFailed(item_id=o.id, error=text) for o in outcomes]
        return replies
