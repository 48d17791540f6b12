"""The project's one exception type."""


class PipelineError(Exception):
    """The one error type of this project: its message says what is wrong and how to fix it."""
