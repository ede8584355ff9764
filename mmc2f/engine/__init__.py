"""Training and evaluation: hooks, the layer-decay constructor, the CPU-capable runner and the
process-wide setup (:mod:`.process`). Registered lazily through ``mmc2f.registry``."""
