"""``pipelines plan``: how many rows and tokens, how much memory, how long — before a job starts.

Owns: the plan's typed records (:mod:`.records`), counting the input and forming the
batches actors get (:mod:`.inputs`), the node types of ``cluster.yaml`` and this
machine (:mod:`.hardware`), the sample through the job's tokenizer and task
(:mod:`.tokens`), the model's size and actor fits (:mod:`.memory`), timing one
predictor (:mod:`.measure`), putting it together (:mod:`.build`) and the readable
form (:mod:`.render`). May import :mod:`pipelines.io`, :mod:`pipelines.spec`,
:mod:`pipelines.runner`, :mod:`pipelines.cluster.connect`, :mod:`pipelines.output.staging`;
torch and transformers only inside the functions that tokenize, count weights or measure.
"""
