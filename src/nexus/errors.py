"""The one hierarchy of NEXUS errors.

Three families matter to the agent loop:

* `RecoverableError` — the model did something wrong (unknown tool, bad arguments,
  a tool that raised or timed out). The loop feeds the message back to the model as
  a tool result and carries on.
* `TerminalError` — the session cannot go on (budget exhausted, provider
  unreachable after retries, malformed provider response). The loop journals the
  reason and ends the session as `failed`; nothing already journaled is lost.
* `ControlFlow` — the session stops on purpose: `SessionKilled` (hard stop, ends
  `killed`), `SessionSuspended` (ends this run as `paused`, to continue later on any
  worker), and `ApprovalRequired` (suspended until a person decides). Raised by
  guards and by the control channel; the loop maps each to its status and journals it.
"""

from __future__ import annotations


class NexusError(Exception):
    """Base of every error NEXUS raises on purpose."""


class ConfigError(NexusError):
    """A setting, an agent file or a toolkit definition is invalid."""


class StorageError(NexusError):
    """The database cannot be opened, migrated or written."""


class SchemaVersionError(StorageError):
    """The database was written by a newer NEXUS than this one."""


class SessionFinished(NexusError):
    """A command was sent to a session that has already ended."""


class DispatchError(NexusError):
    """A session could not be handed to the workers; it ended `failed` with the reason."""


class StorageCorrupt(StorageError):
    """The database file is damaged (or unexpectedly empty): NEXUS refuses to read or
    write it, and says which file and what to do.

    Args:
        path: the damaged file.
        detail: what is wrong with it, as SQLite or the check reported it.
    """

    def __init__(self, path: str, detail: str) -> None:
        name = path.rsplit("/", 1)[-1]
        super().__init__(
            f"database {path} is damaged ({detail}): stop NEXUS, keep a copy, "
            f"restore from backup or run `sqlite3 {name} .recover`"
        )
        self.path = path
        self.detail = detail


class JournalError(NexusError):
    """An append would break the journal (a conflicting sequence number)."""


class SessionFenced(JournalError):
    """This run of a session is stale: another worker took the session over (its
    epoch moved on), so this run may neither append nor make side effects."""


class SecretNotFound(ConfigError):
    """A tool asked for a secret that is not declared by it, or not set."""


class SessionNotFound(NexusError):
    """No session with this id exists."""


class RecoverableError(NexusError):
    """An error the model can act on; it is returned to the model as a tool result."""


class UnknownToolError(RecoverableError):
    """The model called a tool the agent does not have."""


class ToolArgumentsError(RecoverableError):
    """The model's tool arguments are not JSON or violate the tool's schema."""


class ToolExecutionError(RecoverableError):
    """The tool raised an exception."""


class ToolTimeoutError(RecoverableError):
    """The tool did not finish within its timeout."""


class TerminalError(NexusError):
    """An error that ends the session as `failed`."""


class LimitExceeded(TerminalError):
    """A limit of the session (steps, tokens, wall time, cost) is exhausted."""


class ProviderError(TerminalError):
    """The LLM provider could not give a usable answer."""


class ProviderUnavailable(ProviderError):
    """The provider did not answer, or answered with a status that a retry or
    another provider may cure (timeouts, 429, 5xx). `retry_after` carries the
    server's `Retry-After`, in seconds, when it sent one."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderResponseError(ProviderError):
    """The provider answered with something that is not a valid chat completion."""


class NoProviderConfigured(ProviderError):
    """No provider is configured and none answers at the default address."""


class ToolCallRefused(RecoverableError):
    """The kernel refused a tool call without running it (a duplicate call id, more
    calls in one turn than the agent allows): the model is told why and may retry."""


class ToolStopped(NexusError):
    """A tool noticed that its session was killed, and made no side effect."""


class ToolFenced(ToolStopped):
    """A tool refused a side effect from a stale run (an older epoch than the
    session's, or than one the resource has already seen)."""


class ToolResultTooLarge(RecoverableError):
    """A tool returned more than `max_tool_result_bytes`: the model should ask for less."""


class ControlFlow(NexusError):
    """The session stops on purpose; not an error of the model or of NEXUS.

    Args:
        reason: why, as a person reads it.
        by: who or what decided it (a user, a guard, a trigger).
        command: the control-channel command it applies, if one (journaled with
            the effect, so a command is applied once).
        interrupted: what happened to a step cut short by it (journaled with the
            step's outcome), e.g. "the tool ran in a thread and was abandoned".
        noticed_at: when (epoch seconds) the session's process learned of it and
            refused every further effect (a kill), if earlier than its journaling.
    """

    def __init__(
        self,
        reason: str,
        *,
        by: str = "kernel",
        command: int | None = None,
        interrupted: str | None = None,
        noticed_at: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.by = by
        self.command = command
        self.interrupted = interrupted
        self.noticed_at = noticed_at


class SessionKilled(ControlFlow):
    """Hard stop: the session ends `killed` and never runs again."""


class SessionSuspended(ControlFlow):
    """Soft stop: the session ends this run `paused`, keeping everything, and
    continues from its next step when resumed."""


class ApprovalRequired(SessionSuspended):
    """A step needs a person's decision: the session is suspended until then."""
