"""Input shards: finding them (:mod:`.shards`), reading one into blocks with bad rows marked (:mod:`.reader`),
the bookkeeping columns of a block (:mod:`.block`), the Ray Data datasource (:mod:`.datasource`), the
deterministic sample of a job's rows (:mod:`.sample`) and the request lines of an OpenAI Batch file
(:mod:`.openai_batch`).

Light: pyarrow and numpy, no torch; only :mod:`.datasource` imports Ray. May
import :mod:`pipelines.errors`; nothing else of the package.
"""
