"""ecdit: EC-DiT, the expert-choice Mixture-of-Experts diffusion transformer, and the systems it is
measured against — a specification, its fast twin, and everything around them.

The layers, bottom to top; each imports only from those below it (docs/architecture.md,
enforced by tests/test_layers.py):

    ecdit.core          configs and presets, argument contracts, parameter init and counting (NumPy)
    ecdit.reference     the specification in plain NumPy, one function per equation (reference/)
    ecdit.accelerated   its jit-compiled JAX twin: same modules, names, signatures (accelerated/)
    ecdit.systems       data set, tokenizer, scorer; optimiser, training loop, checkpoints; sampling
    ecdit.app           the `ecdit` command line, demo, compare, reports, heatmaps, plots
    ecdit.benchmarks    benchmark suites and the report (benchmarks/)

Importing `ecdit` or `ecdit.reference` loads no JAX.
"""
__version__ = "0.2.0"
