"""The bookkeeping columns a block carries from the reader, through the predictor, to the staging writer.

``_shard`` (the shard's key), ``_row`` (the row's index in its shard), ``_shard_rows``
(rows in the whole shard, so the driver knows when a shard is complete) and
``_error`` (why a row can't be predicted, else null), ``_digest`` (a hash of
the shard file's bytes) and ``_file_size`` (how many bytes were read: the file as read may not be
the file as listed), so a commit can record what it read, come from the reader; the
predictor adds ``_tokens`` (the real tokens the model read for a row), ``_padded`` (the tokens its
forward computed, padding included), ``_generated`` (the tokens generated for it) and ``_cut`` (1 where the
row's text or prompt was cut to fit ``max_length``, else 0): staged with a row's data, so that a row the commit
quarantines leaves the shard's counts.
None of them reaches the output files.
"""

SHARD, ROW, SHARD_ROWS, ERROR, DIGEST, FILE_SIZE = "_shard", "_row", "_shard_rows", "_error", "_digest", "_file_size"
TOKENS, PADDED, GENERATED, CUT = "_tokens", "_padded", "_generated", "_cut"
COUNTS = (TOKENS, PADDED, GENERATED, CUT)
BOOKKEEPING = (SHARD, ROW, SHARD_ROWS, ERROR, DIGEST, FILE_SIZE)
