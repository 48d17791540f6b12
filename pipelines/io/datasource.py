"""A Ray Data datasource with one read task per input shard."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines.io.reader import Columns, read_shard
from pipelines.io.shards import Shard


class ShardDatasource(Datasource):
    """Reads the given shards with :func:`read_shard`: only the needed columns, bad rows marked."""

    def __init__(self, shards: list[Shard], columns: Columns) -> None:
        self.shards = shards
        self.columns = columns

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(s.size for s in self.shards) or None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        return [self._task(shard) for shard in self.shards]

    def _task(self, shard: Shard) -> ReadTask:
        columns = self.columns

        def read() -> Iterable[pa.Table]:
            return read_shard(shard, columns)

        metadata = BlockMetadata(num_rows=None, size_bytes=shard.size, exec_stats=None, input_files=(shard.uri,))
        return ReadTask(read, metadata)
