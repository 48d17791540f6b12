"""Ray clusters: joining one as a driver and checking the pool fits (:mod:`.connect`), the job server client
behind ``pipelines submit/status/logs/stop`` (:mod:`.jobs`), and token authentication (:mod:`.auth`).

Ray is imported inside the functions that need it. May import :mod:`pipelines.spec`
and :mod:`pipelines.errors`; no torch.
"""
