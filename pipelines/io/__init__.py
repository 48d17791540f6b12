"""Reading input shards and writing output files, on any filesystem pyarrow knows."""
