"""conveyor's core: everything the actors use that is not an actor.

Configuration, the injected clock, errors, the store, the scheduler with its retry policy
and circuit breakers, the input reader, the transports, logging and the plugin base
classes. Nothing here imports pykka or an actor, and nothing here starts a thread of its
own: importing ``runtime.core.config`` stays cheap (an import-linter contract holds this).
"""
