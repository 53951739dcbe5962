"""The trainer service: a thin gRPC servicer over a core that knows nothing about gRPC."""

import logging

# bitsandbytes (which peft imports) fetches a Hub kernel for 4-bit matmuls on CPUs with AVX512-BF16
# at import, and offline says so twice in every process, then uses its own kernel; only errors pass.
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).setLevel(logging.ERROR)
