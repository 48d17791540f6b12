"""What runs inside an actor: one model, loaded once, and padded batch inference over Arrow batches.

Owns the predictor (:mod:`.predictor`), length-sorted micro-batching and padding
(:mod:`.batching`, numpy only), model loading with device, dtype and
bitsandbytes quantization (:mod:`.loading`), a CPU model's Linear layers on oneDNN with
weights packed once (:mod:`.packed_linear`), int8 Linear layers with a scale per token
(:mod:`.int8_linear`) and the fixed texts smooth-int8 calibrates on (:mod:`.calibration_texts`),
the built-in model aliases (:mod:`.aliases`, light), the actor's heavy imports made as it makes them
(:mod:`.heavy_imports`, light until called), the driver's check that a model's files
are there (:mod:`.checks`, light), the GGUF conversion of ``smollm2`` (:mod:`.gguf`), the
quantized-vs-unquantized comparison (:mod:`.fidelity`) and the libraries' log noise (:mod:`.library_logs`).
May import torch, transformers, :mod:`pipelines.spec`, :mod:`pipelines.tasks`
and :mod:`pipelines.io.block`; never Ray (the predictor runs the same in a
plain process) and no task by name (tasks are looked up from the spec).
"""
