"""A Ray Data datasource with one read task per group of input shards (small shards are read together)."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines.io.reader import Columns, group_shards, read_group
from pipelines.io.shards import Shard


class ShardDatasource(Datasource):
    """Reads the given shards with :func:`read_group`: only the needed columns, bad rows marked."""

    def __init__(self, shards: list[Shard], columns: Columns) -> None:
        self.shards = shards
        self.columns = columns

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(s.size for s in self.shards) or None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        groups = group_shards([shard.size for shard in self.shards])
        return [self._task([self.shards[i] for i in group]) for group in groups]

    def _task(self, shards: list[Shard]) -> ReadTask:
        columns = self.columns

        def read() -> Iterable[pa.Table]:
            return read_group(shards, columns)

        size = sum(shard.size for shard in shards)
        metadata = BlockMetadata(
            num_rows=None, size_bytes=size, exec_stats=None, input_files=tuple(shard.uri for shard in shards)
        )
        return ReadTask(read, metadata)
