"""What the libraries under the predictor may print: each of their warnings once per process, no loading bars.

bitsandbytes (0.50) reports "MatMul8bitLt: inputs will be cast from torch.float32 to
float16 during quantization" through ``logging`` (the logger
``bitsandbytes.autograd._functions``) on every int8 matmul, and not through
``warnings.warn``, so a ``warnings`` filter never sees it: in a Ray actor each
line goes to the actor's stderr, which Ray forwards to the driver's terminal, a
thousand times a run. A filter on the library's loggers lets each kind of message
(its format string) through once per process. A logger's filters apply to records
logged on that very logger only (not to its children's records), so the filter is
put on every ``bitsandbytes`` logger that exists once the model is loaded.
"""

from __future__ import annotations

import logging

#: Libraries whose repeated log messages are shown once per process.
REPEATING = ("bitsandbytes",)


class OncePerProcess(logging.Filter):
    """Passes the first record of each message format (per logger) and drops the repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def hide_loading_bars() -> None:
    """No "Loading weights" progress bars from transformers (one per actor, between Ray's progress lines)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


def once_per_process(prefixes: tuple[str, ...] = REPEATING) -> None:
    """Show each message of these libraries' (already created) loggers once in this process."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in prefixes]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerProcess) for f in logger.filters):
            logger.addFilter(OncePerProcess())
